//! AWS identities: the default role (`AWS_ROLE_ARN`) and the named ones (`--aws-role
//! NAME=ARN`, assumed with the web-identity token; `--aws-chained-role NAME=ARN@BASE`, assumed
//! with `AssumeRole` from another identity's credentials), each with its own slot, refresh and
//! readiness, served at `/v1/credentials/NAME` and listed by IMDSv2.

use std::collections::BTreeMap;

use super::config::RoleArn;
use crate::config::ConfigError;

/// The name the default identity answers to as a chain's base.
pub const DEFAULT: &str = "default";
/// At most this many named identities: each is a slot, a refresh loop and an upstream call per
/// lifetime; a pod that needs more is better split.
pub const MAX_IDENTITIES: usize = 16;
/// STS caps a session reached by role chaining at one hour (docs/aws.md, "STS AssumeRole").
pub const CHAINED_MAX_SECS: u32 = 3600;

/// How an identity's credentials are obtained.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Via {
    /// `AssumeRoleWithWebIdentity` with the pod's projected token.
    WebIdentity,
    /// `AssumeRole`, signed with identity `base`'s credentials.
    Chained { base: String },
}

/// `AssumeRole`'s optional parameters (chained roles only).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RoleOptions {
    pub external_id: Option<String>,
    pub source_identity: Option<String>,
    /// Session tags, in the order given.
    pub tags: Vec<(String, String)>,
    /// Tag keys that pass on to sessions chained from this one.
    pub transitive: Vec<String>,
    /// `DurationSeconds` (default: the session duration; at most an hour when chained).
    pub duration: Option<u32>,
}

/// One named identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub name: String,
    pub role: RoleArn,
    pub via: Via,
    pub options: RoleOptions,
}

/// The named identities from the flags, validated: names unique and usable in a path, options
/// only where STS takes them, chains ending at a web-identity role (no cycles), bounded.
pub fn parse(
    roles: &[String],
    chained: &[String],
    options: &[String],
    default_role: &RoleArn,
) -> Result<Vec<Identity>, ConfigError> {
    let mut out: Vec<Identity> = Vec::new();
    for spec in roles {
        let (name, arn) = split_pair("--aws-role", spec, "NAME=ROLE_ARN")?;
        out.push(Identity {
            name,
            role: role("--aws-role", &arn)?,
            via: Via::WebIdentity,
            options: RoleOptions::default(),
        });
    }
    for spec in chained {
        let (name, rest) = split_pair("--aws-chained-role", spec, "NAME=ROLE_ARN@BASE")?;
        let (arn, base) = rest.rsplit_once('@').ok_or_else(|| {
            ConfigError::new(
                "--aws-chained-role",
                format!("{spec:?} names no base identity (NAME=ROLE_ARN@BASE)"),
            )
        })?;
        out.push(Identity {
            name,
            role: role("--aws-chained-role", arn)?,
            via: Via::Chained {
                base: base.trim().to_string(),
            },
            options: RoleOptions::default(),
        });
    }
    if out.len() > MAX_IDENTITIES {
        return Err(ConfigError::new(
            "--aws-role",
            format!(
                "{} named identities; at most {MAX_IDENTITIES} per pod",
                out.len()
            ),
        ));
    }
    let mut seen = BTreeMap::new();
    for (i, id) in out.iter().enumerate() {
        check_name(&id.name)?;
        if id.name == DEFAULT || id.name == default_role.name {
            return Err(ConfigError::new(
                "--aws-role",
                format!(
                    "{:?} is the default identity's name (\"{DEFAULT}\" and the default role's name {:?} are taken)",
                    id.name, default_role.name
                ),
            ));
        }
        if seen.insert(id.name.clone(), i).is_some() {
            return Err(ConfigError::new(
                "--aws-role",
                format!("the identity name {:?} is given twice", id.name),
            ));
        }
    }
    for spec in options {
        apply_option(&mut out, spec)?;
    }
    for id in &out {
        check_chain(id, &out)?;
    }
    Ok(out)
}

fn split_pair(flag: &str, spec: &str, shape: &str) -> Result<(String, String), ConfigError> {
    let (name, value) = spec
        .split_once('=')
        .ok_or_else(|| ConfigError::new(flag, format!("{spec:?} is not {shape}")))?;
    Ok((name.trim().to_string(), value.trim().to_string()))
}

fn role(flag: &str, arn: &str) -> Result<RoleArn, ConfigError> {
    RoleArn::parse(arn).map_err(|e| ConfigError::new(flag, e.problem))
}

/// Names are path segments (`/v1/credentials/NAME`) and IMDS role names.
fn check_name(name: &str) -> Result<(), ConfigError> {
    let ok = (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
        && !name.starts_with('.');
    if ok {
        Ok(())
    } else {
        Err(ConfigError::new(
            "--aws-role",
            format!(
                "the identity name {name:?} must be 1-64 characters of [A-Za-z0-9_.-], not starting with '.'"
            ),
        ))
    }
}

/// `NAME:external-id=V`, `NAME:source-identity=V`, `NAME:tag=KEY=VALUE`,
/// `NAME:transitive-tag=KEY`, `NAME:duration=SECS`.
fn apply_option(ids: &mut [Identity], spec: &str) -> Result<(), ConfigError> {
    const FLAG: &str = "--aws-role-option";
    let bad = |why: &str| ConfigError::new(FLAG, format!("{spec:?}: {why}"));
    let (name, option) = spec
        .split_once(':')
        .ok_or_else(|| bad("expected NAME:OPTION=VALUE"))?;
    let (key, value) = option
        .split_once('=')
        .ok_or_else(|| bad("expected NAME:OPTION=VALUE"))?;
    let id = ids
        .iter_mut()
        .find(|i| i.name == name.trim())
        .ok_or_else(|| bad("no identity of that name (--aws-role or --aws-chained-role)"))?;
    let chained = matches!(id.via, Via::Chained { .. });
    let o = &mut id.options;
    match key.trim() {
        "duration" => {
            let secs: u32 = value
                .trim()
                .parse()
                .map_err(|_| bad("not a number of seconds"))?;
            let max = if chained { CHAINED_MAX_SECS } else { 43_200 };
            if !(900..=max).contains(&secs) {
                return Err(bad(&format!(
                    "must be 900..={max} seconds{}",
                    if chained {
                        " (STS limits a chained session to one hour)"
                    } else {
                        ""
                    }
                )));
            }
            o.duration = Some(secs);
            return Ok(());
        }
        _ if !chained => {
            return Err(bad(
                "AssumeRoleWithWebIdentity takes no such option; only chained roles have it",
            ));
        }
        "external-id" => o.external_id = Some(value.to_string()),
        "source-identity" => o.source_identity = Some(value.to_string()),
        "tag" => {
            let (k, v) = value
                .split_once('=')
                .ok_or_else(|| bad("expected tag=KEY=VALUE"))?;
            if o.tags.len() >= 50 {
                return Err(bad("STS takes at most 50 session tags"));
            }
            o.tags.push((k.to_string(), v.to_string()));
        }
        "transitive-tag" => o.transitive.push(value.to_string()),
        other => {
            return Err(bad(&format!(
                "unknown option {other:?} (external-id, source-identity, tag, transitive-tag, duration)"
            )));
        }
    }
    Ok(())
}

/// A chain must end at a web-identity role (the default or a named one), without a cycle, and
/// transitive keys must be tags of the same session.
fn check_chain(id: &Identity, all: &[Identity]) -> Result<(), ConfigError> {
    let mut current = id;
    for _ in 0..=all.len() {
        match &current.via {
            Via::WebIdentity => {
                for key in &id.options.transitive {
                    if !id.options.tags.iter().any(|(k, _)| k == key) {
                        return Err(ConfigError::new(
                            "--aws-role-option",
                            format!(
                                "{}: transitive tag {key:?} is not one of its session tags",
                                id.name
                            ),
                        ));
                    }
                }
                return Ok(());
            }
            Via::Chained { base } if base == DEFAULT => {
                return check_chain(
                    &Identity {
                        via: Via::WebIdentity,
                        ..id.clone()
                    },
                    all,
                );
            }
            Via::Chained { base } => {
                current = all.iter().find(|i| &i.name == base).ok_or_else(|| {
                    ConfigError::new(
                        "--aws-chained-role",
                        format!(
                            "{}: base identity {base:?} is neither \"{DEFAULT}\" nor a named identity",
                            current.name
                        ),
                    )
                })?;
            }
        }
    }
    Err(ConfigError::new(
        "--aws-chained-role",
        format!("{}: the chain of base identities loops", id.name),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn default_role() -> RoleArn {
        RoleArn::parse("arn:aws:iam::123456789012:role/app").unwrap()
    }

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn named_and_chained_identities_with_options() {
        let ids = parse(
            &strings(&["reader=arn:aws:iam::123456789012:role/reader"]),
            &strings(&["audit=arn:aws:iam::210987654321:role/audit@reader"]),
            &strings(&[
                "audit:external-id=ext-1",
                "audit:tag=team=payments",
                "audit:tag=env=prod",
                "audit:transitive-tag=team",
                "audit:duration=1800",
                "reader:duration=7200",
            ]),
            &default_role(),
        )
        .unwrap();
        assert_eq!(ids.len(), 2);
        assert_eq!(
            ids[1].via,
            Via::Chained {
                base: "reader".into()
            }
        );
        assert_eq!(ids[1].options.external_id.as_deref(), Some("ext-1"));
        assert_eq!(ids[1].options.tags.len(), 2);
        assert_eq!(ids[1].options.duration, Some(1800));
        assert_eq!(ids[0].options.duration, Some(7200));
    }

    #[test]
    fn what_is_refused() {
        let arn = "arn:aws:iam::123456789012:role/x";
        /// (--aws-role values, --aws-chained-role values, options, the subject of the error)
        type Case<'a> = (&'a [&'a str], &'a [&'a str], &'a [&'a str], &'a str);
        let cases: &[Case] = &[
            (&["bad name=arn"], &[], &[], "--aws-role"),
            (&[&format!("default={arn}")], &[], &[], "--aws-role"),
            (&[&format!("app={arn}")], &[], &[], "--aws-role"),
            (
                &[&format!("a={arn}"), &format!("a={arn}")],
                &[],
                &[],
                "--aws-role",
            ),
            (
                &[],
                &[&format!("c={arn}@nowhere")],
                &[],
                "--aws-chained-role",
            ),
            (
                &[],
                &[&format!("c={arn}@d"), &format!("d={arn}@c")],
                &[],
                "--aws-chained-role",
            ),
            (
                &[],
                &[&format!("c={arn}@default")],
                &["c:duration=7200"],
                "--aws-role-option",
            ),
            (
                &[&format!("r={arn}")],
                &[],
                &["r:external-id=x"],
                "--aws-role-option",
            ),
            (
                &[],
                &[&format!("c={arn}@default")],
                &["c:transitive-tag=k"],
                "--aws-role-option",
            ),
            (
                &[],
                &[&format!("c={arn}@default")],
                &["c:colour=blue"],
                "--aws-role-option",
            ),
            (&[], &[], &["nobody:duration=900"], "--aws-role-option"),
        ];
        for (roles, chained, options, subject) in cases {
            let e = parse(
                &strings(roles),
                &strings(chained),
                &strings(options),
                &default_role(),
            )
            .unwrap_err();
            assert_eq!(
                e.subject, *subject,
                "{roles:?} {chained:?} {options:?}: {e}"
            );
        }
        let many: Vec<String> = (0..17).map(|i| format!("r{i}={arn}")).collect();
        assert!(parse(&many, &[], &[], &default_role()).is_err());
    }
}
