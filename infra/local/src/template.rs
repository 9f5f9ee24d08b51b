//! `template.yaml` (AWS SAM / CloudFormation) as data: parameters, globals, conditions,
//! mappings and resources, with every YAML short tag (`!Ref`, `!GetAtt`, `!Sub`, ...)
//! rewritten to its long form (see [`crate::intrinsics`]).

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use serde_yaml::{Mapping, Value};

use crate::intrinsics::{normalize, scalar_string};

/// A parsed template.
#[derive(Debug, Clone)]
pub struct Template {
    path: PathBuf,
    dir: PathBuf,
    description: Option<String>,
    parameters: Vec<Parameter>,
    globals: Mapping,
    conditions: Vec<(String, Value)>,
    mappings: Mapping,
    resources: Vec<Resource>,
    outputs: Vec<(String, Value)>,
}

/// One entry of the `Parameters` section.
#[derive(Debug, Clone, PartialEq)]
pub struct Parameter {
    pub name: String,
    /// `Type` (`String`, `Number`, ...).
    pub kind: String,
    /// `Default`, as CloudFormation passes it on (numbers and booleans as strings).
    pub default: Option<String>,
}

/// One entry of the `Resources` section.
#[derive(Debug, Clone, PartialEq)]
pub struct Resource {
    pub logical_id: String,
    /// `Type`, e.g. `AWS::SQS::Queue`.
    pub kind: String,
    /// `Properties` (an empty mapping when absent), intrinsics in long form.
    pub properties: Value,
    /// `DependsOn`.
    pub depends_on: Vec<String>,
    /// `Condition`: the resource exists only when that condition is true.
    pub condition: Option<String>,
    /// `Metadata` (`Value::Null` when absent).
    pub metadata: Value,
}

impl Resource {
    /// A top-level property.
    pub fn property(&self, key: &str) -> Option<&Value> {
        self.properties.get(key)
    }

    /// A nested property, e.g. `["ScalingConfig", "MaximumConcurrency"]`.
    pub fn property_path(&self, path: &[&str]) -> Option<&Value> {
        lookup(&self.properties, path)
    }
}

/// Follows `path` through nested mappings.
pub fn lookup<'a>(value: &'a Value, path: &[&str]) -> Option<&'a Value> {
    path.iter().try_fold(value, |v, key| v.get(*key))
}

impl Template {
    /// Reads and parses a template file. Relative paths inside it (`DefinitionUri`) are taken
    /// from the file's directory.
    pub fn load(path: &Path) -> Result<Template> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading template {}", path.display()))?;
        let dir = path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        let mut template =
            Self::parse(&text, &dir).with_context(|| format!("parsing {}", path.display()))?;
        template.path = path.to_path_buf();
        Ok(template)
    }

    /// Parses template text; `dir` is the directory relative paths are resolved against.
    pub fn parse(text: &str, dir: &Path) -> Result<Template> {
        let mut root: Value = serde_yaml::from_str(text).context("invalid YAML")?;
        root.apply_merge().context("YAML merge keys")?;
        let root = normalize(root);
        let root = root
            .as_mapping()
            .ok_or_else(|| anyhow!("a template must be a YAML mapping"))?;

        let section = |name: &str| -> Result<Mapping> {
            match root.get(name) {
                None | Some(Value::Null) => Ok(Mapping::new()),
                Some(Value::Mapping(m)) => Ok(m.clone()),
                Some(other) => bail!("{name} must be a mapping, got {other:?}"),
            }
        };

        let mut parameters = Vec::new();
        for (name, body) in section("Parameters")? {
            let name = key_string(&name)?;
            parameters.push(Parameter {
                kind: body
                    .get("Type")
                    .and_then(Value::as_str)
                    .unwrap_or("String")
                    .to_string(),
                default: body.get("Default").and_then(|d| match d {
                    Value::Sequence(items) => Some(
                        items
                            .iter()
                            .filter_map(scalar_string)
                            .collect::<Vec<_>>()
                            .join(","),
                    ),
                    other => scalar_string(other),
                }),
                name,
            });
        }

        let mut resources = Vec::new();
        for (id, body) in section("Resources")? {
            let logical_id = key_string(&id)?;
            let kind = body
                .get("Type")
                .and_then(Value::as_str)
                .ok_or_else(|| anyhow!("resource {logical_id} has no Type"))?
                .to_string();
            let properties = match body.get("Properties") {
                None | Some(Value::Null) => Value::Mapping(Mapping::new()),
                Some(p) => p.clone(),
            };
            let depends_on = match body.get("DependsOn") {
                None => Vec::new(),
                Some(Value::String(s)) => vec![s.clone()],
                Some(Value::Sequence(items)) => items
                    .iter()
                    .filter_map(Value::as_str)
                    .map(String::from)
                    .collect(),
                Some(other) => {
                    bail!("{logical_id}: DependsOn must be a name or a list, got {other:?}")
                }
            };
            resources.push(Resource {
                condition: body
                    .get("Condition")
                    .and_then(Value::as_str)
                    .map(String::from),
                metadata: body.get("Metadata").cloned().unwrap_or(Value::Null),
                logical_id,
                kind,
                properties,
                depends_on,
            });
        }

        let named = |name: &str| -> Result<Vec<(String, Value)>> {
            section(name)?
                .into_iter()
                .map(|(k, v)| Ok((key_string(&k)?, v)))
                .collect()
        };

        Ok(Template {
            path: PathBuf::new(),
            dir: dir.to_path_buf(),
            description: root.get("Description").and_then(scalar_string),
            parameters,
            globals: section("Globals")?,
            conditions: named("Conditions")?,
            mappings: section("Mappings")?,
            resources,
            outputs: named("Outputs")?,
        })
    }

    /// The file the template was loaded from (empty for [`Template::parse`]).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The directory relative paths in the template (`DefinitionUri`, `CodeUri`) start from.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn description(&self) -> Option<&str> {
        self.description.as_deref()
    }

    pub fn parameters(&self) -> &[Parameter] {
        &self.parameters
    }

    pub fn parameter(&self, name: &str) -> Option<&Parameter> {
        self.parameters.iter().find(|p| p.name == name)
    }

    /// Like `sam deploy --parameter-overrides`: the value every Ref to `name` resolves to.
    pub fn override_parameter(&mut self, name: &str, value: &str) -> Result<()> {
        let parameter = self
            .parameters
            .iter_mut()
            .find(|p| p.name == name)
            .ok_or_else(|| anyhow::anyhow!("template.yaml has no parameter {name}"))?;
        parameter.default = Some(value.to_owned());
        Ok(())
    }

    /// A `Globals` section (`Function`, `Api`, `HttpApi`, `StateMachine`, ...).
    pub fn globals(&self, section: &str) -> Option<&Value> {
        self.globals.get(section)
    }

    /// `Globals.Function`.
    pub fn globals_function(&self) -> Option<&Value> {
        self.globals("Function")
    }

    /// `Conditions`, in declaration order.
    pub fn conditions(&self) -> &[(String, Value)] {
        &self.conditions
    }

    pub fn mappings(&self) -> &Mapping {
        &self.mappings
    }

    /// `Resources`, in declaration order.
    pub fn resources(&self) -> &[Resource] {
        &self.resources
    }

    pub fn resource(&self, logical_id: &str) -> Option<&Resource> {
        self.resources.iter().find(|r| r.logical_id == logical_id)
    }

    /// The resources of one type, in declaration order.
    pub fn resources_of_type<'a>(
        &'a self,
        kind: &'a str,
    ) -> impl Iterator<Item = &'a Resource> + 'a {
        self.resources.iter().filter(move |r| r.kind == kind)
    }

    /// `Outputs`, in declaration order (each body still holds `Value`, `Description`, ...).
    pub fn outputs(&self) -> &[(String, Value)] {
        &self.outputs
    }
}

fn key_string(key: &Value) -> Result<String> {
    scalar_string(key).ok_or_else(|| anyhow!("expected a name, got {key:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const YAML: &str = r#"
Parameters:
  Stage: { Type: String, Default: prod }
  Size: { Type: Number, Default: 5 }
  NoDefault: { Type: String }
Globals:
  Function:
    Timeout: 29
    Environment:
      Variables:
        TABLE: !Ref Table
Conditions:
  IsProd: !Equals [!Ref Stage, prod]
Resources:
  Table:
    Type: AWS::DynamoDB::Table
    Properties:
      TableName: !Sub "${AWS::StackName}-t"
  Queue:
    Type: AWS::SQS::Queue
    DependsOn: Table
    Condition: IsProd
  Fn:
    Type: AWS::Serverless::Function
    Properties:
      Environment:
        Variables:
          Q: !GetAtt Queue.Arn
"#;

    #[test]
    fn sections_and_accessors() {
        let t = Template::parse(YAML, Path::new("/tmp")).unwrap();
        assert_eq!(
            t.parameter("Stage").unwrap().default.as_deref(),
            Some("prod")
        );
        assert_eq!(t.parameter("Size").unwrap().default.as_deref(), Some("5"));
        assert_eq!(t.parameter("Size").unwrap().kind, "Number");
        assert_eq!(t.parameter("NoDefault").unwrap().default, None);
        let g = t.globals_function().unwrap();
        assert_eq!(g.get("Timeout").and_then(Value::as_u64), Some(29));
        // Short tags come out in long form.
        let table_env = lookup(g, &["Environment", "Variables", "TABLE"]).unwrap();
        assert_eq!(table_env.get("Ref").and_then(Value::as_str), Some("Table"));
        let q = t.resource("Queue").unwrap();
        assert_eq!(q.depends_on, vec!["Table".to_string()]);
        assert_eq!(q.condition.as_deref(), Some("IsProd"));
        assert!(q.properties.as_mapping().unwrap().is_empty());
        assert_eq!(t.resources_of_type("AWS::Serverless::Function").count(), 1);
        let arn = t
            .resource("Fn")
            .unwrap()
            .property_path(&["Environment", "Variables", "Q", "Fn::GetAtt"])
            .unwrap();
        assert_eq!(arn, &Value::Sequence(vec!["Queue".into(), "Arn".into()]));
        assert_eq!(t.conditions().len(), 1);
        assert_eq!(t.dir(), Path::new("/tmp"));
    }

    #[test]
    fn project_template_loads() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../template.yaml");
        let t = Template::load(&path).unwrap();
        assert!(t.resource("TasksTable").is_some());
        assert!(t.resources_of_type("AWS::Serverless::Function").count() >= 1);
    }
}
