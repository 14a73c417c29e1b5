//! The SigV4-signed STS actions: `AssumeRole` (role chaining) and `GetCallerIdentity`.
//!
//! Where each behaviour comes from:
//! - Parameters and their limits: botocore's STS model (`botocore/data/sts/2011-06-15/service-2.json`,
//!   `AssumeRoleRequest`): `RoleArn` 20–2048, `RoleSessionName` 2–64 `[\w+=,.@-]*`,
//!   `DurationSeconds` 900–43200, `ExternalId` 2–1224 `[\w+=,.@:\/-]*`, `SourceIdentity` 2–64
//!   `[\w+=,.@-]*`, `Tags` at most 50 (key 1–128 `[\p{L}\p{Z}\p{N}_.:/=+\-@]+`, value 0–256
//!   `[\p{L}\p{Z}\p{N}_.:/=+\-@]*`), `TransitiveTagKeys` at most 50. Violations answer
//!   `ValidationError` "N validation error(s) detected: Value '…' at 'member' failed to satisfy
//!   constraint: …" (the recorded STS answers in LocalStack's `tests/aws/services/sts/
//!   test_sts.snapshot.json`, e.g. `roleSessionName`).
//! - Tag rules, all `InvalidParameterValue` (400) with STS's texts as recorded against AWS in the
//!   same snapshot file (`test_assume_role_tag_validation`,
//!   `test_iam_role_chaining_override_transitive_tags`): duplicate keys regardless of case; a
//!   transitive key that is not among the tags; a tag whose key is a transitive key of the calling
//!   session (the IAM User Guide, "Chaining roles with session tags": passing `Heart=3` when
//!   `Heart` came transitively "will fail"). Transitive tags of the caller pass on to the new
//!   session and stay transitive (same guide).
//! - `SourceIdentity` cannot change once set (IAM User Guide, "Monitor and control actions taken
//!   with assumed roles"); live STS answers `ValidationError` "The source identity is already
//!   set for this assume role session" (recorded in mahitotsu/gekko_08's
//!   `experiments/multi-hop-propagation/RESULTS.md`). Passing the *same* value again is accepted
//!   here; that case is not recorded anywhere we could read.
//! - Role chaining: "if you assume a role using role chaining and provide a DurationSeconds
//!   parameter value greater than one hour, the operation fails" (the model's AssumeRole docs);
//!   the live text is "The requested DurationSeconds exceeds the 1 hour session limit for roles
//!   assumed by role chaining." (`ValidationError`, quoted verbatim in aws-vault#263,
//!   aws-runas#11, prowler#7721). Credentials from `AssumeRoleWithWebIdentity` are role
//!   sessions, so `AssumeRole` with them is chaining.
//! - Trust failures (role missing, caller not trusted, `ExternalId` wrong or missing):
//!   `AccessDenied` (403) "User: CALLER_ARN is not authorized to perform: sts:AssumeRole on
//!   resource: ROLE_ARN" (the live text in pulumi-aws#4849 and countless reports). Session tags
//!   need `sts:TagSession` in the trust statement too, and so does inheriting transitive tags
//!   along a chain even when the call passes none (observed against AWS in mahitotsu/gekko_08's
//!   RESULTS.md; terrapod PR#1546); the denial names `sts:TagSession` the same way (gekko_08's
//!   tests match "not authorized to perform: sts:TagSession"). `SourceIdentity` needs
//!   `sts:SetSourceIdentity` (IAM User Guide); its denial text is assumed to follow suit.
//! - `PackedPolicyTooLarge` "Packed policy consumes N% of allotted space, please use smaller
//!   policy." (the live text users report); the percentage is this fake's own estimate.

use super::sigv4;
use super::{
    FakeSts, Identity, IssuedCredentials, Params, SessionTag, StsError, StsRecord, XMLNS,
    parse_role_arn, role_id, valid_session_name_chars, xml_escape,
};
use crate::timefmt::unix_now;
use std::fmt::Write as _;

/// Role chaining caps a session at one hour.
const CHAIN_MAX_DURATION: u64 = 3_600;
const MAX_TAGS: usize = 50;
const TAG_KEY_PATTERN: &str = r"[\p{L}\p{Z}\p{N}_.:/=+\-@]+";
const TAG_VALUE_PATTERN: &str = r"[\p{L}\p{Z}\p{N}_.:/=+\-@]*";
const CHAIN_LIMIT: &str = "The requested DurationSeconds exceeds the 1 hour session limit for roles assumed by role chaining.";

impl FakeSts {
    /// Authenticates a signed request, then runs its action (`AssumeRole` or
    /// `GetCallerIdentity`, already looked up).
    pub(super) fn signed_call(
        &self,
        req: &http::Request<bytes::Bytes>,
        p: &Params,
        request_id: &str,
        record: &mut StsRecord,
    ) -> Result<(String, Option<IssuedCredentials>), StsError> {
        let caller = self.authenticate(req)?;
        record.caller_arn = Some(caller.arn.clone());
        if p.get("Action") == Some("GetCallerIdentity") {
            return Ok((caller_identity_xml(&caller, request_id), None));
        }
        let (xml, creds, inherited) = self.assume_role(p, &caller, request_id)?;
        record.inherited_tags = inherited;
        Ok((xml, Some(creds)))
    }

    /// The SigV4 checks in AWS's order (see [`sigv4`]), then the key, the signature, the
    /// session token and the expiry.
    fn authenticate(&self, req: &http::Request<bytes::Bytes>) -> Result<Identity, StsError> {
        let now = unix_now();
        let region = self.region();
        let sig_err = |e: sigv4::SigError| StsError::new(e.code, e.message);
        let auth = sigv4::parse(req, now, &region, "sts").map_err(sig_err)?;
        let stored = self
            .identities
            .lock()
            .get(&auth.access_key_id)
            .cloned()
            .ok_or_else(|| StsError::new("InvalidClientTokenId", sigv4::UNKNOWN_KEY))?;
        sigv4::verify(req, &auth, &stored.secret).map_err(sig_err)?;
        let presented = req
            .headers()
            .get("x-amz-security-token")
            .map(|v| v.as_bytes());
        let token_ok = match (stored.identity.session_token.as_deref(), presented) {
            (Some(expected), Some(given)) => {
                aws_lc_rs::constant_time::verify_slices_are_equal(expected.as_bytes(), given)
                    .is_ok()
            }
            (None, None) => true,
            _ => false,
        };
        if !token_ok {
            return Err(StsError::new("InvalidClientTokenId", sigv4::BAD_TOKEN));
        }
        if stored.identity.expires_at.is_some_and(|e| e <= now) {
            return Err(StsError::new("ExpiredToken", sigv4::EXPIRED_TOKEN));
        }
        Ok(stored.identity)
    }

    /// Validates and performs one `AssumeRole` for `caller`; returns the response XML, the
    /// credentials and the tags inherited from the caller.
    fn assume_role(
        &self,
        p: &Params,
        caller: &Identity,
        request_id: &str,
    ) -> Result<(String, IssuedCredentials, Vec<SessionTag>), StsError> {
        let required = |name: &str| {
            p.get(name).ok_or_else(|| {
                StsError::new(
                    "MissingParameter",
                    format!("The request must contain the parameter {name}"),
                )
            })
        };
        let role_arn = required("RoleArn")?;
        let session = required("RoleSessionName")?;
        let external_id = p.get("ExternalId");
        let source_identity = p.get("SourceIdentity");
        let policy = p.get("Policy");
        let tags = p.tags();
        let transitive = p.transitive_tag_keys();

        let mut problems = Vec::new();
        // Messages are plain text: `error_response` escapes them once.
        let v = |s: &str| s.to_string();
        length(&mut problems, role_arn, "roleArn", 20, 2048);
        length(&mut problems, session, "roleSessionName", 2, 64);
        if !valid_session_name_chars(session) {
            problems.push(format!("Value '{}' at 'roleSessionName' failed to satisfy constraint: Member must satisfy regular expression pattern: [\\w+=,.@-]*", v(session)));
        }
        let mut duration = super::DEFAULT_DURATION;
        if let Some(raw) = p.get("DurationSeconds") {
            match raw.parse::<u64>() {
                Ok(d) if d < super::MIN_DURATION => problems.push(format!("Value '{d}' at 'durationSeconds' failed to satisfy constraint: Member must have value greater than or equal to {}", super::MIN_DURATION)),
                Ok(d) if d > super::MAX_DURATION => problems.push(format!("Value '{d}' at 'durationSeconds' failed to satisfy constraint: Member must have value less than or equal to {}", super::MAX_DURATION)),
                Ok(d) => duration = d,
                Err(_) => problems.push(format!("Value '{}' at 'durationSeconds' failed to satisfy constraint: Member must be an integer", v(raw))),
            }
        }
        if let Some(id) = external_id {
            length(&mut problems, id, "externalId", 2, 1224);
            if !id.chars().all(|c| word_char(c) || "+=,.@:/-".contains(c)) {
                problems.push(format!("Value '{}' at 'externalId' failed to satisfy constraint: Member must satisfy regular expression pattern: [\\w+=,.@:\\/-]*", v(id)));
            }
        }
        if let Some(si) = source_identity {
            length(&mut problems, si, "sourceIdentity", 2, 64);
            if !valid_session_name_chars(si) {
                problems.push(format!("Value '{}' at 'sourceIdentity' failed to satisfy constraint: Member must satisfy regular expression pattern: [\\w+=,.@-]*", v(si)));
            }
        }
        if let Some(policy) = policy
            && !(1..=super::POLICY_BUDGET).contains(&policy.chars().count())
        {
            problems.push(format!("Value at 'policy' failed to satisfy constraint: Member must have length less than or equal to {}", super::POLICY_BUDGET));
        }
        if tags.len() > MAX_TAGS {
            problems.push(format!("Value at 'tags' failed to satisfy constraint: Member must have length less than or equal to {MAX_TAGS}"));
        }
        for (i, (key, value)) in tags.iter().enumerate() {
            let n = i + 1;
            match key {
                None => problems.push(format!("Value null at 'tags.{n}.member.key' failed to satisfy constraint: Member must not be null")),
                Some(k) => {
                    length(&mut problems, k, &format!("tags.{n}.member.key"), 1, 128);
                    if !k.chars().all(tag_char) {
                        problems.push(format!("Value '{}' at 'tags.{n}.member.key' failed to satisfy constraint: Member must satisfy regular expression pattern: {TAG_KEY_PATTERN}", v(k)));
                    }
                }
            }
            match value {
                None => problems.push(format!("Value null at 'tags.{n}.member.value' failed to satisfy constraint: Member must not be null")),
                Some(val) => {
                    length(&mut problems, val, &format!("tags.{n}.member.value"), 0, 256);
                    if !val.chars().all(tag_char) {
                        problems.push(format!("Value '{}' at 'tags.{n}.member.value' failed to satisfy constraint: Member must satisfy regular expression pattern: {TAG_VALUE_PATTERN}", v(val)));
                    }
                }
            }
        }
        if transitive.len() > MAX_TAGS {
            problems.push(format!("Value at 'transitiveTagKeys' failed to satisfy constraint: Member must have length less than or equal to {MAX_TAGS}"));
        }
        for (i, key) in transitive.iter().enumerate() {
            let member = format!("transitiveTagKeys.{}.member", i + 1);
            length(&mut problems, key, &member, 1, 128);
            if !key.chars().all(tag_char) {
                problems.push(format!("Value '{}' at '{member}' failed to satisfy constraint: Member must satisfy regular expression pattern: {TAG_KEY_PATTERN}", v(key)));
            }
        }
        if !problems.is_empty() {
            let n = problems.len();
            let noun = if n == 1 { "error" } else { "errors" };
            return Err(StsError::new(
                "ValidationError",
                format!("{n} validation {noun} detected: {}", problems.join("; ")),
            ));
        }
        let Some(arn) = parse_role_arn(role_arn) else {
            return Err(StsError::new(
                "ValidationError",
                format!("{role_arn} is invalid"),
            ));
        };

        let tags: Vec<SessionTag> = tags
            .into_iter()
            .map(|(k, v)| SessionTag {
                key: k.unwrap_or_default().to_string(),
                value: v.unwrap_or_default().to_string(),
            })
            .collect();
        check_tags(&tags, &transitive, caller)?;
        if let (Some(set), Some(asked)) = (caller.source_identity.as_deref(), source_identity)
            && set != asked
        {
            return Err(StsError::new(
                "ValidationError",
                "The source identity is already set for this assume role session",
            ));
        }

        // The caller's transitive tags pass on to the new session.
        let inherited: Vec<SessionTag> = caller
            .tags
            .iter()
            .filter(|t| contains_ci(&caller.transitive_tag_keys, &t.key))
            .cloned()
            .collect();
        let max_session = {
            let roles = self.roles.lock();
            let role = roles.get(role_arn);
            let statements: Vec<&super::Trust> = role
                .map(|role| {
                    role.principals
                        .iter()
                        .filter(|(principal, trust)| {
                            principal_matches(principal, caller)
                                && trust
                                    .external_id
                                    .as_deref()
                                    .is_none_or(|id| external_id == Some(id))
                        })
                        .map(|(_, trust)| trust)
                        .collect()
                })
                .unwrap_or_default();
            let denied = |action: &str| {
                StsError::new(
                    "AccessDenied",
                    format!(
                        "User: {} is not authorized to perform: {action} on resource: {role_arn}",
                        caller.arn
                    ),
                )
            };
            if statements.is_empty() {
                return Err(denied("sts:AssumeRole"));
            }
            let tagging = !(tags.is_empty() && inherited.is_empty());
            if tagging && !statements.iter().any(|t| t.tag_session) {
                return Err(denied("sts:TagSession"));
            }
            if source_identity.is_some() && !statements.iter().any(|t| t.set_source_identity) {
                return Err(denied("sts:SetSourceIdentity"));
            }
            role.map_or(super::DEFAULT_MAX_SESSION, |r| r.max_session)
        };
        if caller.is_role_session() && duration > CHAIN_MAX_DURATION {
            return Err(StsError::new("ValidationError", CHAIN_LIMIT));
        }
        if duration > max_session {
            return Err(StsError::new(
                "ValidationError",
                "The requested DurationSeconds exceeds the MaxSessionDuration set for this role.",
            ));
        }
        let packed = packed_policy_percent(p, policy, &tags);
        if let Some(percent) = packed
            && percent > 100
        {
            return Err(StsError::new(
                "PackedPolicyTooLarge",
                format!(
                    "Packed policy consumes {percent}% of allotted space, please use smaller policy."
                ),
            ));
        }

        // The new session: the caller's transitive tags, then the requested ones; the caller's
        // transitive keys stay transitive.
        let mut transitive_keys = caller.transitive_tag_keys.clone();
        transitive_keys.extend(transitive.iter().map(|k| k.to_string()));
        let source_identity = source_identity
            .map(str::to_string)
            .or_else(|| caller.source_identity.clone());
        let (creds, expires_at) = self.new_credentials(role_arn, duration);
        let assumed_arn = format!(
            "arn:{}:sts::{}:assumed-role/{}/{session}",
            arn.partition, arn.account, arn.name
        );
        let user_id = format!("{}:{session}", role_id(role_arn));
        self.register(
            creds.secret_access_key.clone(),
            Identity {
                access_key_id: creds.access_key_id.clone(),
                arn: assumed_arn.clone(),
                user_id: user_id.clone(),
                account: arn.account.to_string(),
                role_arn: Some(role_arn.to_string()),
                session_token: Some(creds.session_token.clone()),
                expires_at: Some(expires_at),
                source_identity: source_identity.clone(),
                tags: inherited.iter().chain(&tags).cloned().collect(),
                transitive_tag_keys: transitive_keys,
            },
        );

        let mut xml = String::with_capacity(2048);
        let _ = writeln!(
            xml,
            "<AssumeRoleResponse xmlns=\"{XMLNS}\">\n  <AssumeRoleResult>"
        );
        if let Some(si) = &source_identity {
            let _ = writeln!(
                xml,
                "    <SourceIdentity>{}</SourceIdentity>",
                xml_escape(si)
            );
        }
        let _ = write!(
            xml,
            "    <AssumedRoleUser>\n\
             \x20     <AssumedRoleId>{user_id}</AssumedRoleId>\n\
             \x20     <Arn>{arn}</Arn>\n\
             \x20   </AssumedRoleUser>\n\
             \x20   <Credentials>\n\
             \x20     <AccessKeyId>{akid}</AccessKeyId>\n\
             \x20     <SecretAccessKey>{secret}</SecretAccessKey>\n\
             \x20     <SessionToken>{token}</SessionToken>\n\
             \x20     <Expiration>{expiration}</Expiration>\n\
             \x20   </Credentials>\n",
            user_id = xml_escape(&user_id),
            arn = xml_escape(&assumed_arn),
            akid = creds.access_key_id,
            secret = creds.secret_access_key,
            token = creds.session_token,
            expiration = creds.expiration,
        );
        if let Some(percent) = packed {
            let _ = writeln!(xml, "    <PackedPolicySize>{percent}</PackedPolicySize>");
        }
        let _ = write!(
            xml,
            "  </AssumeRoleResult>\n\
             \x20 <ResponseMetadata>\n\
             \x20   <RequestId>{request_id}</RequestId>\n\
             \x20 </ResponseMetadata>\n\
             </AssumeRoleResponse>\n"
        );
        Ok((xml, creds, inherited))
    }
}

/// `GetCallerIdentityResponse` (the API reference's example, and botocore's `resultWrapper`).
fn caller_identity_xml(caller: &Identity, request_id: &str) -> String {
    format!(
        "<GetCallerIdentityResponse xmlns=\"{XMLNS}\">\n\
         \x20 <GetCallerIdentityResult>\n\
         \x20   <Arn>{arn}</Arn>\n\
         \x20   <UserId>{user_id}</UserId>\n\
         \x20   <Account>{account}</Account>\n\
         \x20 </GetCallerIdentityResult>\n\
         \x20 <ResponseMetadata>\n\
         \x20   <RequestId>{request_id}</RequestId>\n\
         \x20 </ResponseMetadata>\n\
         </GetCallerIdentityResponse>\n",
        arn = xml_escape(&caller.arn),
        user_id = xml_escape(&caller.user_id),
        account = xml_escape(&caller.account),
    )
}

/// The tag rules STS checks beyond the model (see the module docs).
fn check_tags(tags: &[SessionTag], transitive: &[&str], caller: &Identity) -> Result<(), StsError> {
    let invalid = |message: &str| Err(StsError::new("InvalidParameterValue", message));
    let mut seen: Vec<String> = Vec::with_capacity(tags.len());
    for tag in tags {
        let folded = tag.key.to_lowercase();
        if seen.contains(&folded) {
            return invalid(
                "Duplicate tag keys found. Please note that Tag keys are case insensitive.",
            );
        }
        seen.push(folded);
    }
    if transitive.iter().any(|k| !seen.contains(&k.to_lowercase())) {
        return invalid("The specified transitive tag key must be included in the requested tags.");
    }
    if tags
        .iter()
        .any(|t| contains_ci(&caller.transitive_tag_keys, &t.key))
    {
        return invalid(
            "One of the specified transitive tag keys can't be set because it conflicts with a transitive tag key from the calling session.",
        );
    }
    Ok(())
}

/// Whether a trust statement's principal names this caller: its session ARN, its role, its IAM
/// user, or its account's root.
fn principal_matches(principal: &str, caller: &Identity) -> bool {
    let partition = caller.arn.split(':').nth(1).unwrap_or("aws");
    principal == caller.arn
        || caller.role_arn.as_deref() == Some(principal)
        || principal == format!("arn:{partition}:iam::{}:root", caller.account)
}

/// `PackedPolicySize` when the request passes session policies or tags: this fake's estimate,
/// the plain text of the policy, policy ARNs and tags against the 2048-character budget.
fn packed_policy_percent(p: &Params, policy: Option<&str>, tags: &[SessionTag]) -> Option<usize> {
    let arns = p.list("PolicyArns", ".arn");
    if policy.is_none() && arns.is_empty() && tags.is_empty() {
        return None;
    }
    let size = policy.map_or(0, str::len)
        + arns.iter().map(|(_, a)| a.len()).sum::<usize>()
        + tags
            .iter()
            .map(|t| t.key.len() + t.value.len())
            .sum::<usize>();
    Some((size * 100).div_ceil(super::POLICY_BUDGET).max(1))
}

fn contains_ci(keys: &[String], key: &str) -> bool {
    let key = key.to_lowercase();
    keys.iter().any(|k| k.to_lowercase() == key)
}

/// `\w` in AWS's (Java) patterns: ASCII letters, digits and `_`.
fn word_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// `[\p{L}\p{Z}\p{N}_.:/=+\-@]`: letters, separators, numbers and `_.:/=+-@`.
fn tag_char(c: char) -> bool {
    let separator = matches!(
        c,
        ' ' | '\u{a0}' | '\u{1680}' | '\u{2000}'
            ..='\u{200a}' | '\u{2028}' | '\u{2029}' | '\u{202f}' | '\u{205f}' | '\u{3000}'
    );
    c.is_alphabetic() || c.is_numeric() || separator || "_.:/=+-@".contains(c)
}

/// A model length constraint, in STS's message form.
fn length(problems: &mut Vec<String>, value: &str, member: &str, min: usize, max: usize) {
    let n = value.chars().count();
    if n < min {
        problems.push(format!("Value '{value}' at '{member}' failed to satisfy constraint: Member must have length greater than or equal to {min}"));
    } else if n > max {
        problems.push(format!("Value '{value}' at '{member}' failed to satisfy constraint: Member must have length less than or equal to {max}"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(tags: &[(&str, &str)], transitive: &[&str]) -> Identity {
        Identity {
            access_key_id: "ASIAEXAMPLE".into(),
            arn: "arn:aws:sts::123456789012:assumed-role/a/s".into(),
            user_id: "AROAEXAMPLE:s".into(),
            account: "123456789012".into(),
            role_arn: Some("arn:aws:iam::123456789012:role/a".into()),
            session_token: Some("t".into()),
            expires_at: None,
            source_identity: None,
            tags: tags
                .iter()
                .map(|(k, v)| SessionTag {
                    key: k.to_string(),
                    value: v.to_string(),
                })
                .collect(),
            transitive_tag_keys: transitive.iter().map(|k| k.to_string()).collect(),
        }
    }

    fn tag(k: &str, v: &str) -> SessionTag {
        SessionTag {
            key: k.into(),
            value: v.into(),
        }
    }

    #[test]
    fn tag_rules() {
        let caller = session(&[("Team", "a")], &["team"]);
        assert!(check_tags(&[tag("Project", "x")], &["project"], &caller).is_ok());
        let dup = check_tags(&[tag("k", "1"), tag("K", "2")], &[], &caller).unwrap_err();
        assert_eq!(dup.code, "InvalidParameterValue");
        assert!(dup.message.starts_with("Duplicate tag keys found."));
        let missing = check_tags(&[tag("k", "1")], &["other"], &caller).unwrap_err();
        assert!(
            missing
                .message
                .contains("must be included in the requested tags")
        );
        let conflict = check_tags(&[tag("TEAM", "b")], &[], &caller).unwrap_err();
        assert!(
            conflict
                .message
                .contains("conflicts with a transitive tag key")
        );
    }

    #[test]
    fn principals_and_chars() {
        let caller = session(&[], &[]);
        assert!(principal_matches(
            "arn:aws:iam::123456789012:role/a",
            &caller
        ));
        assert!(principal_matches(
            "arn:aws:sts::123456789012:assumed-role/a/s",
            &caller
        ));
        assert!(principal_matches("arn:aws:iam::123456789012:root", &caller));
        assert!(!principal_matches(
            "arn:aws:iam::123456789012:role/b",
            &caller
        ));
        assert!(!principal_matches(
            "arn:aws:iam::210987654321:root",
            &caller
        ));
        assert!(tag_char('é') && tag_char(' ') && tag_char('@') && tag_char('7'));
        assert!(!tag_char('#') && !tag_char('*') && !tag_char('\t'));
        assert!(word_char('_') && !word_char('-'));
    }
}
