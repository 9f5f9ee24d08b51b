//! CloudFormation intrinsic functions over `serde_yaml` values.
//!
//! Templates are first [`normalize`]d: the YAML short tags (`!Ref X`, `!GetAtt A.B`, `!Sub ...`)
//! become the long forms (`{Ref: X}`, `{"Fn::GetAtt": [A, B]}`, `{"Fn::Sub": ...}`), so the
//! resolver only deals with one shape. [`resolve`] then evaluates a value against a [`Scope`]
//! that knows the `Ref` and `GetAtt` values of parameters and resources, and the conditions.

use std::collections::{BTreeSet, HashMap};

use anyhow::{anyhow, bail, Context, Result};
use base64::Engine as _;
use serde_yaml::{Mapping, Value};

/// Where `Ref`, `Fn::GetAtt`, `Condition` and `Fn::FindInMap` look their values up.
pub trait Scope {
    /// The `Ref` value of a parameter, pseudo parameter or resource.
    fn reference(&self, name: &str) -> Option<String>;
    /// The `Fn::GetAtt` value of a resource attribute.
    fn attribute(&self, logical_id: &str, attribute: &str) -> Option<String>;
    /// The value of a named condition, if it is known.
    fn condition(&self, _name: &str) -> Option<bool> {
        None
    }
    /// The template's `Mappings` section, for `Fn::FindInMap`.
    fn mappings(&self) -> Option<&Mapping> {
        None
    }
}

/// A [`Scope`] backed by plain maps; attributes are keyed `"LogicalId.Attribute"`.
#[derive(Debug, Default, Clone)]
pub struct MapScope {
    pub refs: HashMap<String, String>,
    pub attributes: HashMap<String, String>,
    pub conditions: HashMap<String, bool>,
    pub mappings: Mapping,
}

impl Scope for MapScope {
    fn reference(&self, name: &str) -> Option<String> {
        self.refs.get(name).cloned()
    }
    fn attribute(&self, logical_id: &str, attribute: &str) -> Option<String> {
        self.attributes
            .get(&format!("{logical_id}.{attribute}"))
            .cloned()
    }
    fn condition(&self, name: &str) -> Option<bool> {
        self.conditions.get(name).copied()
    }
    fn mappings(&self) -> Option<&Mapping> {
        Some(&self.mappings)
    }
}

/// Rewrites every YAML short-form tag into its long form, recursively.
///
/// `!Ref X` → `{Ref: X}`, `!Condition X` → `{Condition: X}`, `!GetAtt A.B` → `{"Fn::GetAtt": [A, B]}`,
/// any other `!Name v` → `{"Fn::Name": v}`.
pub fn normalize(value: Value) -> Value {
    match value {
        Value::Tagged(tagged) => {
            let tag = tagged.tag.to_string();
            let name = tag.trim_start_matches('!').to_string();
            let inner = normalize(tagged.value);
            let (key, inner) = match name.as_str() {
                "Ref" | "Condition" => (name, inner),
                "GetAtt" => match inner {
                    Value::String(s) => (
                        "Fn::GetAtt".to_string(),
                        match s.split_once('.') {
                            Some((id, attr)) => Value::Sequence(vec![id.into(), attr.into()]),
                            None => Value::String(s),
                        },
                    ),
                    other => ("Fn::GetAtt".to_string(), other),
                },
                _ => (format!("Fn::{name}"), inner),
            };
            let mut map = Mapping::new();
            map.insert(Value::String(key), inner);
            Value::Mapping(map)
        }
        Value::Sequence(items) => Value::Sequence(items.into_iter().map(normalize).collect()),
        Value::Mapping(map) => Value::Mapping(
            map.into_iter()
                .map(|(k, v)| (normalize(k), normalize(v)))
                .collect(),
        ),
        other => other,
    }
}

/// If `value` is an intrinsic function call (a one-key mapping whose key is `Ref`, `Condition`
/// or `Fn::*`), returns the function name and its argument.
pub fn as_intrinsic(value: &Value) -> Option<(&str, &Value)> {
    let map = value.as_mapping()?;
    if map.len() != 1 {
        return None;
    }
    let (k, v) = map.iter().next()?;
    let k = k.as_str()?;
    (k == "Ref" || k == "Condition" || k.starts_with("Fn::")).then_some((k, v))
}

/// The logical ids (and parameter names) a value refers to through `Ref`, `Fn::GetAtt` and
/// `Fn::Sub` placeholders. Pseudo parameters (`AWS::...`) are left out.
pub fn references(value: &Value) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    collect_references(value, &mut out);
    out
}

fn collect_references(value: &Value, out: &mut BTreeSet<String>) {
    if let Some((func, arg)) = as_intrinsic(value) {
        match func {
            "Ref" => {
                if let Some(name) = arg.as_str() {
                    if !name.starts_with("AWS::") {
                        out.insert(name.to_string());
                    }
                }
                return;
            }
            "Fn::GetAtt" => {
                match arg {
                    Value::String(s) => {
                        out.insert(s.split('.').next().unwrap_or(s).to_string());
                    }
                    Value::Sequence(items) => {
                        if let Some(id) = items.first().and_then(Value::as_str) {
                            out.insert(id.to_string());
                        }
                        for item in items.iter().skip(1) {
                            collect_references(item, out);
                        }
                    }
                    _ => {}
                }
                return;
            }
            "Fn::Sub" => {
                let (template, vars) = match arg {
                    Value::String(s) => (Some(s.as_str()), None),
                    Value::Sequence(items) => (
                        items.first().and_then(Value::as_str),
                        items.get(1).and_then(Value::as_mapping),
                    ),
                    _ => (None, None),
                };
                if let Some(template) = template {
                    for name in sub_placeholders(template) {
                        let root = name.split('.').next().unwrap_or(&name).to_string();
                        let local = vars.is_some_and(|v| v.contains_key(name.as_str()));
                        if !local && !root.starts_with("AWS::") {
                            out.insert(root);
                        }
                    }
                }
                if let Some(vars) = vars {
                    for v in vars.values() {
                        collect_references(v, out);
                    }
                }
                return;
            }
            _ => {}
        }
    }
    match value {
        Value::Sequence(items) => items.iter().for_each(|v| collect_references(v, out)),
        Value::Mapping(map) => map.values().for_each(|v| collect_references(v, out)),
        Value::Tagged(t) => collect_references(&t.value, out),
        _ => {}
    }
}

/// The `${Name}` placeholders of a `Fn::Sub` template, without the `${!Literal}` escapes.
pub fn sub_placeholders(template: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = template;
    while let Some(start) = rest.find("${") {
        let after = &rest[start + 2..];
        let Some(end) = after.find('}') else { break };
        let name = &after[..end];
        if !name.starts_with('!') {
            names.push(name.trim().to_string());
        }
        rest = &after[end + 1..];
    }
    names
}

/// Evaluates every intrinsic function in `value`. `Ok(None)` means the value is
/// `AWS::NoValue` (the enclosing property should be dropped).
pub fn resolve(value: &Value, scope: &dyn Scope) -> Result<Option<Value>> {
    if let Some((func, arg)) = as_intrinsic(value) {
        return resolve_function(func, arg, scope).with_context(|| format!("in {func}"));
    }
    Ok(Some(match value {
        Value::Sequence(items) => {
            let mut out = Vec::with_capacity(items.len());
            for item in items {
                if let Some(v) = resolve(item, scope)? {
                    out.push(v);
                }
            }
            Value::Sequence(out)
        }
        Value::Mapping(map) => {
            let mut out = Mapping::new();
            for (k, v) in map {
                if let Some(v) = resolve(v, scope)? {
                    out.insert(k.clone(), v);
                }
            }
            Value::Mapping(out)
        }
        Value::Tagged(_) => return resolve(&normalize(value.clone()), scope),
        other => other.clone(),
    }))
}

/// Resolves `value` and requires a scalar, returned as a string (numbers and booleans are
/// formatted the way CloudFormation passes them on).
pub fn resolve_string(value: &Value, scope: &dyn Scope) -> Result<String> {
    let resolved = resolve(value, scope)?.ok_or_else(|| anyhow!("value is AWS::NoValue"))?;
    scalar_string(&resolved).ok_or_else(|| anyhow!("expected a scalar, got {resolved:?}"))
}

/// Resolves `value` to a boolean (condition functions, `true`/`false` strings).
pub fn resolve_bool(value: &Value, scope: &dyn Scope) -> Result<bool> {
    let resolved = resolve(value, scope)?.ok_or_else(|| anyhow!("value is AWS::NoValue"))?;
    match &resolved {
        Value::Bool(b) => Ok(*b),
        Value::String(s) if s.eq_ignore_ascii_case("true") => Ok(true),
        Value::String(s) if s.eq_ignore_ascii_case("false") => Ok(false),
        other => bail!("expected a boolean, got {other:?}"),
    }
}

/// A scalar YAML value as a string; `None` for null, sequences and mappings.
pub fn scalar_string(value: &Value) -> Option<String> {
    match value {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn resolve_function(func: &str, arg: &Value, scope: &dyn Scope) -> Result<Option<Value>> {
    let string = |s: String| Ok(Some(Value::String(s)));
    match func {
        "Ref" => {
            let name = resolve_string(arg, scope)?;
            if name == "AWS::NoValue" {
                return Ok(None);
            }
            let value = scope
                .reference(&name)
                .ok_or_else(|| anyhow!("unresolved Ref {name}"))?;
            string(value)
        }
        "Fn::GetAtt" => {
            let (id, attr) = match arg {
                Value::String(s) => s
                    .split_once('.')
                    .map(|(a, b)| (a.to_string(), b.to_string()))
                    .ok_or_else(|| anyhow!("Fn::GetAtt {s:?} is not Resource.Attribute"))?,
                Value::Sequence(items) if items.len() == 2 => (
                    resolve_string(&items[0], scope)?,
                    resolve_string(&items[1], scope)?,
                ),
                other => bail!("Fn::GetAtt expects [Resource, Attribute], got {other:?}"),
            };
            let value = scope
                .attribute(&id, &attr)
                .ok_or_else(|| anyhow!("unresolved Fn::GetAtt {id}.{attr}"))?;
            string(value)
        }
        "Fn::Sub" => {
            let (template, vars) = match arg {
                Value::String(s) => (s.clone(), HashMap::new()),
                Value::Sequence(items) if !items.is_empty() && items.len() <= 2 => {
                    let template = resolve_string(&items[0], scope)?;
                    let mut vars = HashMap::new();
                    if let Some(map) = items.get(1) {
                        let map = map
                            .as_mapping()
                            .ok_or_else(|| anyhow!("Fn::Sub variables must be a mapping"))?;
                        for (k, v) in map {
                            let k = scalar_string(k)
                                .ok_or_else(|| anyhow!("Fn::Sub variable name {k:?}"))?;
                            let v = resolve_string(v, scope)
                                .with_context(|| format!("Fn::Sub variable {k}"))?;
                            vars.insert(k, v);
                        }
                    }
                    (template, vars)
                }
                other => bail!("Fn::Sub expects a string or [string, {{vars}}], got {other:?}"),
            };
            string(substitute(&template, &vars, scope)?)
        }
        "Fn::Join" => {
            let items = arg
                .as_sequence()
                .filter(|s| s.len() == 2)
                .ok_or_else(|| anyhow!("Fn::Join expects [separator, [values]]"))?;
            let sep = resolve_string(&items[0], scope)?;
            let list = resolve(&items[1], scope)?.unwrap_or(Value::Sequence(vec![]));
            let list = list
                .as_sequence()
                .ok_or_else(|| anyhow!("Fn::Join expects a list of values"))?;
            let parts = list
                .iter()
                .map(|v| scalar_string(v).ok_or_else(|| anyhow!("Fn::Join element {v:?}")))
                .collect::<Result<Vec<_>>>()?;
            string(parts.join(&sep))
        }
        "Fn::Select" => {
            let items = arg
                .as_sequence()
                .filter(|s| s.len() == 2)
                .ok_or_else(|| anyhow!("Fn::Select expects [index, [values]]"))?;
            let index: usize = resolve_string(&items[0], scope)?
                .parse()
                .context("Fn::Select index")?;
            let list = resolve(&items[1], scope)?.unwrap_or(Value::Sequence(vec![]));
            let list = list
                .as_sequence()
                .ok_or_else(|| anyhow!("Fn::Select expects a list"))?;
            list.get(index)
                .cloned()
                .map(Some)
                .ok_or_else(|| anyhow!("Fn::Select index {index} out of range"))
        }
        "Fn::Split" => {
            let items = arg
                .as_sequence()
                .filter(|s| s.len() == 2)
                .ok_or_else(|| anyhow!("Fn::Split expects [separator, string]"))?;
            let sep = resolve_string(&items[0], scope)?;
            let source = resolve_string(&items[1], scope)?;
            Ok(Some(Value::Sequence(
                source.split(sep.as_str()).map(Value::from).collect(),
            )))
        }
        "Fn::If" => {
            let items = arg
                .as_sequence()
                .filter(|s| s.len() == 3)
                .ok_or_else(|| anyhow!("Fn::If expects [condition, then, else]"))?;
            let name = resolve_string(&items[0], scope)?;
            let cond = scope
                .condition(&name)
                .ok_or_else(|| anyhow!("unknown condition {name}"))?;
            resolve(if cond { &items[1] } else { &items[2] }, scope)
        }
        "Condition" => {
            let name = resolve_string(arg, scope)?;
            let cond = scope
                .condition(&name)
                .ok_or_else(|| anyhow!("unknown condition {name}"))?;
            Ok(Some(Value::Bool(cond)))
        }
        "Fn::Equals" => {
            let items = arg
                .as_sequence()
                .filter(|s| s.len() == 2)
                .ok_or_else(|| anyhow!("Fn::Equals expects two values"))?;
            let a = resolve(&items[0], scope)?;
            let b = resolve(&items[1], scope)?;
            let eq = match (&a, &b) {
                (Some(a), Some(b)) => match (scalar_string(a), scalar_string(b)) {
                    (Some(a), Some(b)) => a == b,
                    _ => a == b,
                },
                _ => a == b,
            };
            Ok(Some(Value::Bool(eq)))
        }
        "Fn::Not" => {
            let items = arg
                .as_sequence()
                .filter(|s| s.len() == 1)
                .ok_or_else(|| anyhow!("Fn::Not expects [condition]"))?;
            Ok(Some(Value::Bool(!resolve_bool(&items[0], scope)?)))
        }
        "Fn::And" | "Fn::Or" => {
            let items = arg
                .as_sequence()
                .ok_or_else(|| anyhow!("{func} expects a list of conditions"))?;
            let values = items
                .iter()
                .map(|c| resolve_bool(c, scope))
                .collect::<Result<Vec<_>>>()?;
            let result = if func == "Fn::And" {
                values.iter().all(|b| *b)
            } else {
                values.iter().any(|b| *b)
            };
            Ok(Some(Value::Bool(result)))
        }
        "Fn::Base64" => {
            let s = resolve_string(arg, scope)?;
            string(base64::engine::general_purpose::STANDARD.encode(s))
        }
        "Fn::FindInMap" => {
            let items = arg
                .as_sequence()
                .filter(|s| s.len() >= 3)
                .ok_or_else(|| anyhow!("Fn::FindInMap expects [map, key, key]"))?;
            let map_name = resolve_string(&items[0], scope)?;
            let k1 = resolve_string(&items[1], scope)?;
            let k2 = resolve_string(&items[2], scope)?;
            let found = scope
                .mappings()
                .and_then(|m| m.get(map_name.as_str()))
                .and_then(|m| m.get(k1.as_str()))
                .and_then(|m| m.get(k2.as_str()))
                .cloned();
            match (found, items.get(3)) {
                (Some(v), _) => Ok(Some(v)),
                (None, Some(default)) => {
                    let default = default
                        .as_mapping()
                        .and_then(|m| m.get("DefaultValue"))
                        .ok_or_else(|| anyhow!("Fn::FindInMap default needs DefaultValue"))?;
                    resolve(default, scope)
                }
                (None, None) => bail!("Fn::FindInMap {map_name}.{k1}.{k2} not found"),
            }
        }
        "Fn::ToJsonString" => {
            let v = resolve(arg, scope)?.unwrap_or(Value::Null);
            string(serde_json::to_string(&v).context("Fn::ToJsonString")?)
        }
        other => bail!("intrinsic function {other} is not supported by the local stack"),
    }
}

/// Applies a `Fn::Sub` template: `${Var}` from `vars`, then `${Name}` as a Ref,
/// `${Id.Attr}` as a GetAtt; `${!Literal}` becomes `${Literal}`.
pub fn substitute(
    template: &str,
    vars: &HashMap<String, String>,
    scope: &dyn Scope,
) -> Result<String> {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find('}') else {
            out.push_str(&rest[start..]);
            rest = "";
            break;
        };
        let name = &after[..end];
        if let Some(literal) = name.strip_prefix('!') {
            out.push_str("${");
            out.push_str(literal);
            out.push('}');
        } else {
            let name = name.trim();
            let value = if let Some(v) = vars.get(name) {
                v.clone()
            } else if let Some((id, attr)) = name.split_once('.') {
                scope
                    .attribute(id, attr)
                    .ok_or_else(|| anyhow!("unresolved ${{{name}}} (Fn::GetAtt {id}.{attr})"))?
            } else {
                scope
                    .reference(name)
                    .ok_or_else(|| anyhow!("unresolved ${{{name}}} (Ref {name})"))?
            };
            out.push_str(&value);
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scope() -> MapScope {
        let mut s = MapScope::default();
        s.refs.insert("AWS::StackName".into(), "stk".into());
        s.refs.insert("AWS::Region".into(), "us-east-1".into());
        s.refs.insert("Table".into(), "stk-tasks".into());
        s.refs.insert("Env".into(), "dev".into());
        s.attributes.insert(
            "Queue.Arn".into(),
            "arn:aws:sqs:us-east-1:123456789012:q".into(),
        );
        s.conditions.insert("IsDev".into(), true);
        s
    }

    fn eval(yaml: &str) -> Option<Value> {
        let v = normalize(serde_yaml::from_str(yaml).unwrap());
        resolve(&v, &scope()).unwrap()
    }

    fn eval_str(yaml: &str) -> String {
        scalar_string(&eval(yaml).unwrap()).unwrap()
    }

    #[test]
    fn short_and_long_forms_agree() {
        assert_eq!(eval_str("!Ref Table"), "stk-tasks");
        assert_eq!(eval_str("{Ref: Table}"), "stk-tasks");
        let arn = "arn:aws:sqs:us-east-1:123456789012:q";
        assert_eq!(eval_str("!GetAtt Queue.Arn"), arn);
        assert_eq!(eval_str("!GetAtt [Queue, Arn]"), arn);
        assert_eq!(eval_str("{'Fn::GetAtt': [Queue, Arn]}"), arn);
        assert_eq!(eval_str("{'Fn::GetAtt': Queue.Arn}"), arn);
    }

    #[test]
    fn sub_forms() {
        assert_eq!(eval_str("!Sub '${AWS::StackName}-tasks'"), "stk-tasks");
        assert_eq!(
            eval_str("!Sub 'q=${Queue.Arn} t=${Table} lit=${!Literal}'"),
            "q=arn:aws:sqs:us-east-1:123456789012:q t=stk-tasks lit=${Literal}"
        );
        assert_eq!(
            eval_str("{'Fn::Sub': ['${A}/${Env}', {A: !Ref Table}]}"),
            "stk-tasks/dev"
        );
        assert_eq!(
            eval_str("!Sub ['${X}', {X: !GetAtt Queue.Arn}]"),
            "arn:aws:sqs:us-east-1:123456789012:q"
        );
    }

    #[test]
    fn join_select_split_if() {
        assert_eq!(eval_str("!Join ['-', [a, !Ref Env, 3]]"), "a-dev-3");
        assert_eq!(
            eval_str("{'Fn::Join': ['', ['x', {Ref: Table}]]}"),
            "xstk-tasks"
        );
        assert_eq!(eval_str("!Select [1, [a, b, c]]"), "b");
        assert_eq!(
            eval_str("!Select [5, !Split [':', !GetAtt Queue.Arn]]"),
            "q"
        );
        assert_eq!(eval_str("!If [IsDev, yes-dev, no]"), "yes-dev");
        assert_eq!(eval_str("!Equals [!Ref Env, dev]"), "true");
        assert_eq!(eval_str("!Not [!Equals [!Ref Env, dev]]"), "false");
    }

    #[test]
    fn no_value_drops_properties() {
        let v = eval("{A: 1, B: !Ref AWS::NoValue, C: [x, !If [IsDev, !Ref AWS::NoValue, y]]}")
            .unwrap();
        let m = v.as_mapping().unwrap();
        assert!(m.get("B").is_none());
        assert_eq!(m.get("C").unwrap().as_sequence().unwrap().len(), 1);
    }

    #[test]
    fn unresolved_references_fail_with_the_name() {
        let v = normalize(serde_yaml::from_str("!Ref Missing").unwrap());
        let err = format!("{:#}", resolve(&v, &scope()).unwrap_err());
        assert!(err.contains("Missing"), "{err}");
    }

    #[test]
    fn references_are_collected() {
        let v = normalize(
            serde_yaml::from_str(
                "{a: !Ref Table, b: !GetAtt Queue.Arn, c: !Sub '${Dlq.Arn}/${AWS::Region}/${X}/${!Lit}', \
                 d: !Sub ['${X}', {X: !Ref Other}]}",
            )
            .unwrap(),
        );
        let refs: Vec<_> = references(&v).into_iter().collect();
        assert_eq!(refs, vec!["Dlq", "Other", "Queue", "Table", "X"]);
    }
}
