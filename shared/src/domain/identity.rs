//! Who is calling. On AWS the claims come from the Cognito authorizer; locally
//! the host verifies a JWT and passes the same claims on.

use super::fields::string_enum;
use super::ids::{AgencyId, UserId};
use crate::error::AppError;

string_enum!(
    /// What a caller may do inside its agency.
    Role, "role" {
        Manager => "manager",
        Member => "member",
        Agent => "agent",
        /// Runs the deployment: sees system-wide queue figures; inside its own agency it may
        /// do what a member may.
        Operator => "operator",
    }
);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub user: UserId,
    pub agency: AgencyId,
    pub role: Role,
}

impl Caller {
    /// Builds a caller from authorizer claims (`sub`, `custom:agencyId`, `custom:role`).
    /// Any missing or malformed claim means there is no usable identity.
    pub fn from_claims(
        sub: Option<&str>,
        agency: Option<&str>,
        role: Option<&str>,
    ) -> Result<Self, AppError> {
        let user = sub
            .and_then(|s| UserId::parse(s).ok())
            .ok_or(AppError::Unauthorized)?;
        let agency = agency
            .and_then(|a| AgencyId::parse(a).ok())
            .ok_or(AppError::Unauthorized)?;
        let role = role
            .and_then(|r| r.parse().ok())
            .ok_or(AppError::Unauthorized)?;
        Ok(Self { user, agency, role })
    }

    pub fn is_manager(&self) -> bool {
        self.role == Role::Manager
    }

    /// Whether the caller may see figures across every agency.
    pub fn is_operator(&self) -> bool {
        self.role == Role::Operator
    }

    pub fn require_manager(&self, action: &str) -> Result<(), AppError> {
        if self.is_manager() {
            Ok(())
        } else {
            Err(AppError::Forbidden(format!(
                "only managers may {action}; your role is '{}'",
                self.role
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_claim_is_required() {
        assert!(Caller::from_claims(Some("u1"), Some("a1"), Some("manager")).is_ok());
        assert!(Caller::from_claims(None, Some("a1"), Some("manager")).is_err());
        assert!(Caller::from_claims(Some("u1"), Some("a#1"), Some("manager")).is_err());
        assert!(Caller::from_claims(Some("u1"), Some("a1"), Some("admin")).is_err());
    }
}
