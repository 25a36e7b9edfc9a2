//! RBAC authorization as kube-apiserver's RBAC authorizer does it, over the Roles, ClusterRoles,
//! RoleBindings and ClusterRoleBindings in the store. It applies to requests that carry a bearer
//! token registered with [`crate::Sim::authenticate`]; any other request acts as cluster-admin
//! (the test harness).

use crate::status::ApiError;
use crate::store::Store;
use serde_json::{Value, json};

/// Who a registered token is.
#[derive(Clone, Debug)]
pub struct User {
    pub name: String,
    pub groups: Vec<String>,
}

impl User {
    /// A ServiceAccount's user, with the groups kube-apiserver gives it.
    pub fn service_account(namespace: &str, name: &str) -> Self {
        Self {
            name: format!("system:serviceaccount:{namespace}:{name}"),
            groups: vec![
                "system:serviceaccounts".into(),
                format!("system:serviceaccounts:{namespace}"),
                "system:authenticated".into(),
            ],
        }
    }
}

/// One request, as the authorizer sees it.
pub struct Attributes<'a> {
    pub verb: &'a str,
    pub group: &'a str,
    pub resource: &'a str,
    pub subresource: &'a str,
    pub namespace: Option<&'a str>,
    pub name: Option<&'a str>,
}

pub fn authorize(store: &Store, user: &User, a: &Attributes) -> Result<(), ApiError> {
    if allowed(store, user, a) {
        Ok(())
    } else {
        Err(forbidden(user, a))
    }
}

fn allowed(store: &Store, user: &User, a: &Attributes) -> bool {
    let rt = |plural: &str| {
        store
            .resource_type("rbac.authorization.k8s.io", plural)
            .expect("RBAC types are registered")
    };
    let cluster_roles = store.list(&rt("clusterroles"), None);
    let role_rules = |kind: &str, name: &str, ns: Option<&str>| -> Vec<Value> {
        let found = match kind {
            "ClusterRole" => cluster_roles.iter().find(|r| r["metadata"]["name"] == name),
            _ => None,
        };
        let role = match (found, ns) {
            (Some(r), _) => Some(r.clone()),
            (None, Some(ns)) if kind == "Role" => store.get(&rt("roles"), ns, name).ok(),
            _ => None,
        };
        role.and_then(|r| r["rules"].as_array().cloned())
            .unwrap_or_default()
    };
    // ClusterRoleBindings grant everywhere.
    for binding in store.list(&rt("clusterrolebindings"), None) {
        if binds(&binding, user, None) {
            let rules = role_rules(
                binding["roleRef"]["kind"].as_str().unwrap_or(""),
                binding["roleRef"]["name"].as_str().unwrap_or(""),
                None,
            );
            if rules.iter().any(|r| rule_allows(r, a)) {
                return true;
            }
        }
    }
    // RoleBindings grant only in their own namespace.
    if let Some(ns) = a.namespace {
        for binding in store.list(&rt("rolebindings"), Some(ns)) {
            if binds(&binding, user, Some(ns)) {
                let rules = role_rules(
                    binding["roleRef"]["kind"].as_str().unwrap_or(""),
                    binding["roleRef"]["name"].as_str().unwrap_or(""),
                    Some(ns),
                );
                if rules.iter().any(|r| rule_allows(r, a)) {
                    return true;
                }
            }
        }
    }
    false
}

fn binds(binding: &Value, user: &User, binding_ns: Option<&str>) -> bool {
    let subjects = binding["subjects"].as_array().cloned().unwrap_or_default();
    subjects.iter().any(|s| {
        let name = s["name"].as_str().unwrap_or("");
        match s["kind"].as_str() {
            Some("User") => user.name == name,
            Some("Group") => user.groups.iter().any(|g| g == name),
            Some("ServiceAccount") => {
                // A RoleBinding's ServiceAccount subject defaults to the binding's namespace.
                let ns = s["namespace"].as_str().or(binding_ns).unwrap_or("");
                user.name == format!("system:serviceaccount:{ns}:{name}")
            }
            _ => false,
        }
    })
}

fn has(list: &Value, want: &str) -> bool {
    list.as_array()
        .is_some_and(|l| l.iter().any(|v| v == "*" || v == want))
}

fn rule_allows(rule: &Value, a: &Attributes) -> bool {
    let resource_ok = rule["resources"].as_array().is_some_and(|l| {
        l.iter().filter_map(Value::as_str).any(|r| {
            if a.subresource.is_empty() {
                r == "*" || r == a.resource
            } else {
                r == "*"
                    || r == format!("{}/{}", a.resource, a.subresource)
                    || r == format!("*/{}", a.subresource)
            }
        })
    });
    let names_ok = match rule["resourceNames"].as_array() {
        Some(names) if !names.is_empty() => a.name.is_some_and(|n| names.iter().any(|v| v == n)),
        _ => true,
    };
    has(&rule["verbs"], a.verb) && has(&rule["apiGroups"], a.group) && resource_ok && names_ok
}

fn forbidden(user: &User, a: &Attributes) -> ApiError {
    let resource = if a.subresource.is_empty() {
        a.resource.to_string()
    } else {
        format!("{}/{}", a.resource, a.subresource)
    };
    let what = match a.name {
        Some(n) => format!("{resource} \"{n}\""),
        None => resource.clone(),
    };
    let scope = match a.namespace {
        Some(ns) => format!("in the namespace \"{ns}\""),
        None => "at the cluster scope".into(),
    };
    ApiError {
        code: 403,
        reason: "Forbidden",
        message: format!(
            "{what} is forbidden: User \"{}\" cannot {} resource \"{resource}\" in API group \"{}\" {scope}",
            user.name, a.verb, a.group
        ),
        details: json!({"name": a.name.unwrap_or(""), "group": a.group, "kind": a.resource}),
    }
}
