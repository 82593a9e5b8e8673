//! Tenants: whose operations a caller may see and change.
//!
//! Every operation belongs to one tenant. A caller acts within a [`Scope`]:
//! one tenant, or all of them (administrators, and code embedding the
//! engine). An operation outside the caller's scope is reported as not
//! found, exactly as if it did not exist, so existence never leaks.

use std::fmt;

/// The tenant of a server that runs without authentication.
pub const DEFAULT_TENANT: &str = "";

/// The longest tenant name.
pub const MAX_TENANT_LEN: usize = 63;

/// What a caller may reach.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Scope {
    /// Every tenant's operations.
    All,
    /// One tenant's operations only.
    Tenant(String),
}

impl Scope {
    /// True when an operation of `tenant` is visible in this scope.
    pub fn permits(&self, tenant: &str) -> bool {
        match self {
            Scope::All => true,
            Scope::Tenant(own) => own == tenant,
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scope::All => f.write_str("all tenants"),
            Scope::Tenant(t) => write!(f, "tenant {t:?}"),
        }
    }
}

/// Checks a tenant name: 1 to 63 of lowercase ASCII letters, digits, `-`
/// and `_`, starting with a letter or digit. Names are used in storage keys
/// and file names, so nothing else is allowed.
pub fn check_tenant_name(name: &str) -> Result<(), String> {
    let mut chars = name.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    if !first_ok || name.len() > MAX_TENANT_LEN {
        return Err(format!(
            "tenant {name:?} must be 1 to {MAX_TENANT_LEN} characters and start with a lowercase letter or digit"
        ));
    }
    if let Some(bad) =
        chars.find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-' || *c == '_'))
    {
        return Err(format!(
            "tenant {name:?} contains {bad:?}; use lowercase letters, digits, '-' and '_'"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tenant_scope_sees_only_its_tenant() {
        let scope = Scope::Tenant("acme".into());
        assert!(scope.permits("acme"));
        assert!(!scope.permits("globex"));
        assert!(!scope.permits(DEFAULT_TENANT));
        assert!(Scope::All.permits("globex"));
    }

    #[test]
    fn tenant_names_are_checked() {
        for good in ["acme", "a", "team-7", "x_y", &"a".repeat(63)] {
            assert_eq!(check_tenant_name(good), Ok(()), "{good}");
        }
        for bad in ["", "Acme", "-x", "a b", "a/b", "a\0", &"a".repeat(64), "é"] {
            assert!(check_tenant_name(bad).is_err(), "{bad:?}");
        }
    }
}
