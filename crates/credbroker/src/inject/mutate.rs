//! The mutation: from a pod and the clouds' parts, the JSON Patch that makes it the pod the
//! deploy/ overlays describe. The application containers' environment comes from the sidecar's
//! own configuration code (`app::configure` → each cloud's `app_env`, what `credbroker env`
//! prints), run against the environment and files the sidecar will have.
//!
//! Every operation is computed against the pod as it is, so the patch is idempotent: a pod that
//! already is what it should be (injected before, or re-invoked after another webhook changed
//! nothing of ours) gets no operation at all.

use std::collections::BTreeMap;
use std::sync::Arc;

use json_patch::jsonptr::PointerBuf;
use json_patch::{AddOperation, Patch, PatchOperation};
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMapProjection, Container, ContainerPort, DownwardAPIProjection,
    DownwardAPIVolumeFile, DownwardAPIVolumeSource, EmptyDirVolumeSource, EnvVar, EnvVarSource,
    HTTPGetAction, KeyToPath, ObjectFieldSelector, Pod, Probe, ProjectedVolumeSource,
    ResourceRequirements, SeccompProfile, SecurityContext, ServiceAccountTokenProjection, Volume,
    VolumeMount, VolumeProjection,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde_json::{Value, json};

use super::part::{EnvValue, PodPart, Refusal, SHARED_DIR};
use crate::app;
use crate::cli::{DEFAULT_LISTEN, ServeArgs};
use crate::clouds::AppEnv;
use crate::config::Env;
use crate::fs::MemFs;

/// The sidecar container's name; its presence is what "already injected" means.
pub const SIDECAR: &str = "credbroker";
/// Pod annotation recording which clouds were injected.
pub const INJECTED: &str = "credbroker.io/injected";
/// Pod annotation naming containers whose environment is left alone.
pub const SKIP_CONTAINERS: &str = "credbroker.io/skip-containers";
/// Pod annotation giving a container one of the named identities instead of the default
/// (`worker=writer,web=reader`): the variables `credbroker env` lists for that identity.
pub const CONTAINER_IDENTITIES: &str = "credbroker.io/container-identities";
/// The in-memory volume the sidecar writes into and the applications read (read-only).
const SHARED_VOLUME: &str = "credbroker-shared";
/// The ops port the probes use (the sidecar's default `--ops-listen`).
const OPS_PORT: i32 = 8190;
/// The uid and gid the image runs as (distroless `nonroot`).
const NONROOT: i64 = 65532;

/// What every injected sidecar gets besides the clouds' parts.
#[derive(Debug, Clone)]
pub struct Sidecar {
    pub image: String,
}

/// The clouds' parts for one pod, in registry order.
pub type Parts = Vec<(&'static str, PodPart)>;

/// The patch for `pod`, or why the clouds' configuration is not one the sidecar would accept.
pub fn patch(pod: &Pod, parts: &Parts, sidecar: &Sidecar) -> Result<Patch, Refusal> {
    let app_envs = app_environment(parts)?;
    let mut ops = Vec::new();
    let spec = pod
        .spec
        .as_ref()
        .ok_or_else(|| Refusal("the pod has no spec".into()))?;

    // Annotations: which clouds, and the files the downward API projects.
    let mut annotations = BTreeMap::new();
    let clouds: Vec<&str> = parts.iter().map(|(c, _)| *c).collect();
    annotations.insert(INJECTED.to_string(), clouds.join(","));
    for (_, part) in parts {
        for file in &part.files {
            annotations.insert(file.annotation.to_string(), file.content.clone());
        }
    }
    let existing = pod.metadata.annotations.clone().unwrap_or_default();
    if pod.metadata.annotations.is_none() {
        ops.push(add(&["metadata", "annotations"], json!({})));
    }
    for (key, value) in &annotations {
        if existing.get(key) != Some(value) {
            ops.push(add(&["metadata", "annotations", key], json!(value)));
        }
    }

    // fsGroup, so the application can read the group-readable files the sidecar writes, when
    // the pod sets none (one it sets is the group the files get).
    match &spec.security_context {
        None => ops.push(add(
            &["spec", "securityContext"],
            json!({"fsGroup": NONROOT}),
        )),
        Some(sc) if sc.fs_group.is_none() => {
            ops.push(add(&["spec", "securityContext", "fsGroup"], json!(NONROOT)))
        }
        Some(_) => {}
    }

    // Volumes we own, added when missing by name.
    let wanted = volumes(parts);
    let have: Vec<&str> = spec
        .volumes
        .iter()
        .flatten()
        .map(|v| v.name.as_str())
        .collect();
    let missing: Vec<&Volume> = wanted
        .iter()
        .filter(|v| !have.contains(&v.name.as_str()))
        .collect();
    if spec.volumes.is_none() {
        ops.push(add(&["spec", "volumes"], to_value(&missing)));
    } else {
        for v in missing {
            ops.push(add(&["spec", "volumes", "-"], to_value(v)));
        }
    }

    // The sidecar: the first init container, unless it is there already.
    let inits = spec.init_containers.clone().unwrap_or_default();
    let mut sidecar_at = inits.iter().position(|c| c.name == SIDECAR);
    if sidecar_at.is_none() {
        let container = to_value(&sidecar_container(parts, sidecar));
        if spec.init_containers.is_none() {
            ops.push(add(&["spec", "initContainers"], json!([container])));
        } else {
            ops.push(add(&["spec", "initContainers", "0"], container));
        }
        sidecar_at = Some(0);
    }
    let shift = usize::from(!inits.iter().any(|c| c.name == SIDECAR));

    // The applications: the environment `credbroker env` prints, bypass variables removed, the
    // shared volume mounted read-only. Init containers before the sidecar cannot reach it (it
    // has not started) and are left alone.
    let skip = skipped(pod);
    let exports = exports(&app_envs);
    let chosen = container_identities(pod, &app_envs)?;
    let exports_for = |name: &str| -> Vec<EnvVar> {
        match chosen.get(name) {
            Some(over) => exports
                .iter()
                .map(|e| over.iter().find(|o| o.name == e.name).unwrap_or(e).clone())
                .collect(),
            None => exports.clone(),
        }
    };
    let forbidden: Vec<&str> = app_envs.iter().flat_map(|e| e.forbidden.clone()).collect();
    let before = sidecar_at.unwrap_or(0);
    for (i, c) in inits.iter().enumerate() {
        if c.name == SIDECAR || skip.contains(&c.name.as_str()) || i + shift <= before {
            continue;
        }
        app_ops(
            &mut ops,
            "initContainers",
            i + shift,
            c,
            &exports,
            &forbidden,
        );
    }
    for (i, c) in spec.containers.iter().enumerate() {
        if !skip.contains(&c.name.as_str()) {
            app_ops(
                &mut ops,
                "containers",
                i,
                c,
                &exports_for(&c.name),
                &forbidden,
            );
        }
    }
    Ok(Patch(ops))
}

/// The application environment, from the sidecar's own configuration code: what `credbroker
/// env` prints for the environment and files this sidecar will have. A value the pod provides
/// itself (the downward API) stands in as a sentinel and comes back as that reference.
fn app_environment(parts: &Parts) -> Result<Vec<AppEnvRefs>, Refusal> {
    let fs = Arc::new(MemFs::new());
    // The logging settings are the binary's global flags, not `serve`'s: they change nothing
    // the configuration decides.
    let mut vars: Vec<(String, String)> = common_settings()
        .into_iter()
        .filter(|(k, _)| !k.starts_with("CREDBROKER_LOG_"))
        .collect();
    // What kubelet sets in every pod (OCI reaches proxymux there); any host validates.
    vars.push((
        "KUBERNETES_SERVICE_HOST".into(),
        "kubernetes.default.svc".into(),
    ));
    let mut sentinels: Vec<(String, &'static str)> = Vec::new();
    for (_, part) in parts {
        for (name, value) in &part.env {
            let text = match value {
                EnvValue::Text(t) => t.clone(),
                EnvValue::PodField(field) => {
                    let s = format!("credbroker-pod-field-{}-{}", field, sentinels.len());
                    sentinels.push((s.clone(), field));
                    s
                }
            };
            vars.push((name.clone(), text));
        }
        for file in &part.files {
            fs.insert(file.path(), file.content.clone());
        }
    }
    let (args, env) = ServeArgs::from_settings(vars, &[])
        .map_err(|e| Refusal(format!("the sidecar's settings do not parse: {e}")))?;
    let env = Env::from_pairs(env).with_fs(fs);
    let configs = app::configure(&args, &env).map_err(|e| {
        Refusal(format!(
            "the sidecar would not start with this ServiceAccount's configuration: {e}"
        ))
    })?;
    Ok(app::app_envs(&configs, args.common.listen)
        .into_iter()
        .map(|e| AppEnvRefs::resolve(e, &sentinels))
        .collect())
}

/// The settings every injected sidecar gets, as `CREDBROKER_<FLAG>` variables.
fn common_settings() -> Vec<(String, String)> {
    [
        ("CREDBROKER_LISTEN", DEFAULT_LISTEN.to_string()),
        ("CREDBROKER_OPS_LISTEN", format!("0.0.0.0:{OPS_PORT}")),
        ("CREDBROKER_LOG_FORMAT", "json".to_string()),
        ("CREDBROKER_GROUP_READABLE_FILES", "true".to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

/// One cloud's application environment with downward-API references put back.
struct AppEnvRefs {
    exports: Vec<(String, EnvValue)>,
    forbidden: Vec<&'static str>,
    /// Each named identity's variables, by identity name.
    identities: Vec<(String, Vec<(String, String)>)>,
}

impl AppEnvRefs {
    fn resolve(env: AppEnv, sentinels: &[(String, &'static str)]) -> Self {
        let exports = env
            .exports
            .into_iter()
            .map(|(name, value)| {
                let v = match sentinels.iter().find(|(s, _)| *s == value) {
                    Some((_, field)) => EnvValue::PodField(field),
                    None => EnvValue::Text(value),
                };
                (name, v)
            })
            .collect();
        AppEnvRefs {
            exports,
            forbidden: env.forbidden,
            identities: env
                .identities
                .into_iter()
                .map(|i| (i.name, i.exports))
                .collect(),
        }
    }
}

fn exports(envs: &[AppEnvRefs]) -> Vec<EnvVar> {
    envs.iter()
        .flat_map(|e| e.exports.iter())
        .map(|(name, value)| env_var(name, value))
        .collect()
}

/// The operations that make container `i` of `list` what the application needs.
fn app_ops(
    ops: &mut Vec<PatchOperation>,
    list: &str,
    i: usize,
    c: &Container,
    exports: &[EnvVar],
    forbidden: &[&str],
) {
    let index = i.to_string();
    let current = c.env.clone().unwrap_or_default();
    let mut env: Vec<EnvVar> = current
        .iter()
        .filter(|v| !forbidden.contains(&v.name.as_str()))
        .map(|v| {
            exports
                .iter()
                .find(|e| e.name == v.name)
                .cloned()
                .unwrap_or_else(|| v.clone())
        })
        .collect();
    for e in exports {
        if !env.iter().any(|v| v.name == e.name) {
            env.push(e.clone());
        }
    }
    if env != current {
        ops.push(add(&["spec", list, &index, "env"], to_value(&env)));
    }
    let mounted = c
        .volume_mounts
        .iter()
        .flatten()
        .any(|m| m.name == SHARED_VOLUME || m.mount_path == SHARED_DIR);
    if !mounted {
        let mount = to_value(&VolumeMount {
            name: SHARED_VOLUME.into(),
            mount_path: SHARED_DIR.into(),
            read_only: Some(true),
            ..VolumeMount::default()
        });
        if c.volume_mounts.is_none() {
            ops.push(add(&["spec", list, &index, "volumeMounts"], json!([mount])));
        } else {
            ops.push(add(&["spec", list, &index, "volumeMounts", "-"], mount));
        }
    }
}

/// The containers `credbroker.io/container-identities` gives a named identity, with that
/// identity's variables; a name no cloud has (or one selected only in code) is refused.
fn container_identities(
    pod: &Pod,
    envs: &[AppEnvRefs],
) -> Result<BTreeMap<String, Vec<EnvVar>>, Refusal> {
    let mut out = BTreeMap::new();
    let Some(value) = pod
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(CONTAINER_IDENTITIES))
    else {
        return Ok(out);
    };
    for pair in value.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (container, identity) = pair.split_once('=').ok_or_else(|| {
            Refusal(format!(
                "annotation {CONTAINER_IDENTITIES}: {pair:?} is not CONTAINER=IDENTITY"
            ))
        })?;
        let vars = envs
            .iter()
            .flat_map(|e| e.identities.iter())
            .find(|(name, vars)| name == identity.trim() && !vars.is_empty())
            .map(|(_, vars)| vars)
            .ok_or_else(|| {
                Refusal(format!(
                    "annotation {CONTAINER_IDENTITIES}: no identity {identity:?} a container can select by its environment (its ServiceAccount names the identities)"
                ))
            })?;
        let vars = vars
            .iter()
            .map(|(k, v)| env_var(k, &EnvValue::Text(v.clone())))
            .collect();
        out.insert(container.trim().to_string(), vars);
    }
    Ok(out)
}

fn skipped(pod: &Pod) -> Vec<&str> {
    pod.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(SKIP_CONTAINERS))
        .map(|v| {
            v.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .collect()
        })
        .unwrap_or_default()
}

fn env_var(name: &str, value: &EnvValue) -> EnvVar {
    match value {
        EnvValue::Text(v) => EnvVar {
            name: name.to_string(),
            value: Some(v.clone()),
            value_from: None,
        },
        EnvValue::PodField(field) => EnvVar {
            name: name.to_string(),
            value: None,
            value_from: Some(EnvVarSource {
                field_ref: Some(ObjectFieldSelector {
                    api_version: Some("v1".into()),
                    field_path: field.to_string(),
                }),
                ..EnvVarSource::default()
            }),
        },
    }
}

/// The volumes the injected pod needs: the shared in-memory one, each cloud's projected token,
/// each downward-API file.
fn volumes(parts: &Parts) -> Vec<Volume> {
    let mut out = vec![Volume {
        name: SHARED_VOLUME.into(),
        // Memory-backed: the files hold secrets and must not reach the node's disk.
        empty_dir: Some(EmptyDirVolumeSource {
            medium: Some("Memory".into()),
            size_limit: Some(Quantity("1Mi".into())),
        }),
        ..Volume::default()
    }];
    for (_, part) in parts {
        for t in &part.tokens {
            let mut sources = vec![VolumeProjection {
                service_account_token: Some(ServiceAccountTokenProjection {
                    audience: t.audience.clone(),
                    expiration_seconds: Some(t.expiration_seconds),
                    path: t.file.to_string(),
                }),
                ..VolumeProjection::default()
            }];
            if t.with_cluster_ca {
                sources.push(VolumeProjection {
                    config_map: Some(ConfigMapProjection {
                        name: "kube-root-ca.crt".into(),
                        items: Some(vec![KeyToPath {
                            key: "ca.crt".into(),
                            path: "ca.crt".into(),
                            mode: None,
                        }]),
                        optional: None,
                    }),
                    ..VolumeProjection::default()
                });
                sources.push(VolumeProjection {
                    downward_api: Some(DownwardAPIProjection {
                        items: Some(vec![field_file("namespace", "metadata.namespace")]),
                    }),
                    ..VolumeProjection::default()
                });
            }
            out.push(Volume {
                name: t.volume.into(),
                projected: Some(ProjectedVolumeSource {
                    sources: Some(sources),
                    default_mode: None,
                }),
                ..Volume::default()
            });
        }
        for f in &part.files {
            out.push(Volume {
                name: f.volume.into(),
                downward_api: Some(DownwardAPIVolumeSource {
                    items: Some(vec![field_file(
                        f.file,
                        &format!("metadata.annotations['{}']", f.annotation),
                    )]),
                    default_mode: None,
                }),
                ..Volume::default()
            });
        }
    }
    out
}

fn field_file(path: &str, field: &str) -> DownwardAPIVolumeFile {
    DownwardAPIVolumeFile {
        path: path.into(),
        field_ref: Some(ObjectFieldSelector {
            api_version: Some("v1".into()),
            field_path: field.into(),
        }),
        mode: None,
        resource_field_ref: None,
    }
}

/// The sidecar container, as the overlays' base describes it.
fn sidecar_container(parts: &Parts, sidecar: &Sidecar) -> Container {
    let mut env: Vec<EnvVar> = common_settings()
        .iter()
        .map(|(k, v)| env_var(k, &EnvValue::Text(v.clone())))
        .collect();
    let mut mounts = vec![VolumeMount {
        name: SHARED_VOLUME.into(),
        mount_path: SHARED_DIR.into(),
        ..VolumeMount::default()
    }];
    for (_, part) in parts {
        env.extend(part.env.iter().map(|(k, v)| env_var(k, v)));
        for t in &part.tokens {
            mounts.push(read_only(t.volume, t.dir));
        }
        for f in &part.files {
            mounts.push(read_only(f.volume, f.dir));
        }
    }
    let probe = |path: &str, period: i32, failures: i32| Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.into()),
            port: IntOrString::String("ops".into()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(period),
        failure_threshold: Some(failures),
        timeout_seconds: Some(2),
        ..Probe::default()
    };
    let quantities = |cpu: &str, memory: &str| {
        BTreeMap::from([
            ("cpu".to_string(), Quantity(cpu.into())),
            ("memory".to_string(), Quantity(memory.into())),
        ])
    };
    Container {
        name: SIDECAR.into(),
        image: Some(sidecar.image.clone()),
        image_pull_policy: Some("IfNotPresent".into()),
        // A native sidecar: started before the applications, which start once its startup
        // probe passes (every enabled cloud holds a credential), stopped after them.
        restart_policy: Some("Always".into()),
        args: Some(vec!["serve".into()]),
        env: Some(env),
        ports: Some(vec![ContainerPort {
            name: Some("ops".into()),
            container_port: OPS_PORT,
            protocol: Some("TCP".into()),
            ..ContainerPort::default()
        }]),
        // Up to 5 minutes for the first exchange: an IAM/Entra/GCP binding created just before
        // the pod can take minutes to propagate, and the broker retries with backoff.
        startup_probe: Some(probe("/readyz", 2, 150)),
        readiness_probe: Some(probe("/readyz", 10, 3)),
        liveness_probe: Some(probe("/healthz", 20, 3)),
        // As the overlays: measured RSS 8–10 MiB (docs/deploying.md, "Resources").
        resources: Some(ResourceRequirements {
            requests: Some(quantities("10m", "16Mi")),
            limits: Some(quantities("500m", "64Mi")),
            ..ResourceRequirements::default()
        }),
        security_context: Some(SecurityContext {
            run_as_non_root: Some(true),
            run_as_user: Some(NONROOT),
            run_as_group: Some(NONROOT),
            read_only_root_filesystem: Some(true),
            allow_privilege_escalation: Some(false),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".into()]),
                add: None,
            }),
            seccomp_profile: Some(SeccompProfile {
                type_: "RuntimeDefault".into(),
                localhost_profile: None,
            }),
            ..SecurityContext::default()
        }),
        volume_mounts: Some(mounts),
        ..Container::default()
    }
}

fn read_only(volume: &str, dir: &str) -> VolumeMount {
    VolumeMount {
        name: volume.into(),
        mount_path: dir.into(),
        read_only: Some(true),
        ..VolumeMount::default()
    }
}

fn add(path: &[&str], value: Value) -> PatchOperation {
    PatchOperation::Add(AddOperation {
        path: PointerBuf::from_tokens(path.iter().copied()),
        value,
    })
}

fn to_value<T: serde::Serialize>(v: &T) -> Value {
    // Kubernetes' own types always serialise.
    serde_json::to_value(v).unwrap_or(Value::Null)
}
