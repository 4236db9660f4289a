//! The Kubernetes manifests in `deploy/kubernetes/`: schema validation by
//! `deploy/kubernetes/validate.sh` (kubernetes-validate from PyPI, strict, a pinned
//! Kubernetes version), shown to reject broken manifests, and checks that the probes and
//! the shutdown timing agree with what the server does (docs/operations.md).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn manifest_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/kubernetes")
}

fn read(name: &str) -> String {
    let path = manifest_dir().join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn validate(files: &[&Path]) -> Output {
    Command::new("bash")
        .arg(manifest_dir().join("validate.sh"))
        .args(files)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run deploy/kubernetes/validate.sh")
}

fn text(output: &Output) -> String {
    format!(
        "status: {}\nstdout:\n{}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

#[test]
fn manifests_are_valid_against_the_kubernetes_schema() {
    let output = validate(&[]);
    let shown = text(&output);
    assert!(output.status.success(), "validate.sh failed\n{shown}");
    for name in [
        "configmap.yaml",
        "secret.yaml",
        "deployment.yaml",
        "service.yaml",
        "poddisruptionbudget.yaml",
    ] {
        assert!(
            shown.contains(&format!("{name} passed")),
            "{name} not validated\n{shown}"
        );
    }
}

#[test]
fn broken_manifests_fail_validation() {
    let deployment = read("deployment.yaml");
    let pdb = read("poddisruptionbudget.yaml");
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("deploy-broken-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();

    let broken = |from: &str, what: &str, with: &str| {
        assert!(from.contains(what), "{what:?} not in the manifest");
        from.replacen(what, with, 1)
    };
    let cases = [
        (
            "port-as-string.yaml",
            broken(
                &deployment,
                "containerPort: 50051",
                "containerPort: \"grpc-port\"",
            ),
            "is not of type 'integer'",
        ),
        (
            "unknown-field.yaml",
            broken(&deployment, "readinessProbe:", "readinesProbe:"),
            "'readinesProbe' was unexpected",
        ),
        (
            "removed-api.yaml",
            broken(
                &pdb,
                "apiVersion: policy/v1\n",
                "apiVersion: policy/v1beta1\n",
            ),
            "Couldn't find schema",
        ),
    ];
    for (name, manifest, expected) in &cases {
        let path = dir.join(name);
        std::fs::write(&path, manifest).unwrap();
        let output = validate(&[&path]);
        let shown = text(&output);
        assert_eq!(
            output.status.code(),
            Some(1),
            "{name} should be invalid\n{shown}"
        );
        assert!(
            shown.contains(expected),
            "{name}: expected {expected:?}\n{shown}"
        );
        assert!(shown.contains("INVALID against Kubernetes"), "{shown}");
    }
    // A broken file among valid ones still fails the run.
    let valid = manifest_dir().join("service.yaml");
    let output = validate(&[&valid, &dir.join("port-as-string.yaml")]);
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    let _ = std::fs::remove_dir_all(&dir);
}

/// The lines nested under the first line `key:` (or `- key:`) found in `text`, i.e. until
/// the indentation falls back to that line's.
fn block<'a>(text: &'a str, key: &str) -> &'a str {
    let mut start = None;
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        let trimmed = line.trim_start();
        let indent = line.len() - trimmed.len();
        match start {
            None => {
                let entry = trimmed.strip_prefix("- ").unwrap_or(trimmed).trim_end();
                if entry == format!("{key}:") {
                    start = Some((offset + line.len(), indent));
                }
            }
            Some((from, key_indent)) => {
                if !trimmed.trim().is_empty() && indent <= key_indent {
                    return &text[from..offset];
                }
            }
        }
        offset += line.len();
    }
    match start {
        Some((from, _)) => &text[from..],
        None => panic!("no `{key}:` in\n{text}"),
    }
}

/// The value of the first `key: value` line in `text`, without quotes or a comment.
fn scalar(text: &str, key: &str) -> String {
    text.lines()
        .map(|l| l.trim_start().trim_start_matches("- "))
        .find_map(|l| l.strip_prefix(&format!("{key}:")))
        .map(|v| {
            let v = v.split(" #").next().unwrap().trim();
            v.trim_matches('"').to_string()
        })
        .unwrap_or_else(|| panic!("no `{key}:` in\n{text}"))
}

fn number(text: &str, key: &str) -> u64 {
    let value = scalar(text, key);
    value
        .parse()
        .unwrap_or_else(|_| panic!("{key}: {value:?} is not a number"))
}

#[test]
fn probes_and_shutdown_timing_match_the_server() {
    let deployment = read("deployment.yaml");
    let config = read("configmap.yaml");
    let container = block(&deployment, "containers");

    // Probes: numeric port, the health service names the server serves.
    let readiness = block(container, "readinessProbe");
    assert_eq!(scalar(readiness, "port"), "50051");
    assert_eq!(
        scalar(readiness, "service"),
        "",
        "readiness follows the database"
    );
    let liveness = block(container, "livenessProbe");
    assert_eq!(scalar(liveness, "port"), "50051");
    assert_eq!(scalar(liveness, "service"), "liveness");
    let startup = block(container, "startupProbe");
    assert_eq!(scalar(startup, "port"), "50051");
    assert_eq!(scalar(startup, "service"), "liveness");
    // The port opens after the database wait and the migrations: the startup probe's
    // window must be longer than the wait alone.
    let startup_window = number(startup, "periodSeconds") * number(startup, "failureThreshold");
    let startup_timeout_s = number(&config, "JOBLEDGER_STARTUP_TIMEOUT_MS") / 1000;
    assert!(
        startup_window >= startup_timeout_s + 60,
        "startup probe window {startup_window} s too short for a {startup_timeout_s} s database wait plus migrations"
    );
    assert_eq!(scalar(container, "containerPort"), "50051");
    assert_eq!(scalar(&config, "JOBLEDGER_LISTEN_ADDR"), "0.0.0.0:50051");

    // Shutdown: preStop sleep, then SIGTERM and the drain, all inside the grace period.
    let pre_stop = block(container, "preStop");
    let command = scalar(pre_stop, "command");
    let sleep_s: u64 = command
        .trim_matches(|c| c == '[' || c == ']')
        .split(',')
        .map(|part| part.trim().trim_matches('"'))
        .collect::<Vec<_>>()
        .as_slice()
        .strip_prefix(&["/bin/sleep"])
        .and_then(|rest| rest.first()?.parse().ok())
        .unwrap_or_else(|| panic!("preStop is not [\"/bin/sleep\", N]: {command}"));
    assert!(sleep_s > 0);
    let drain_s = number(&config, "JOBLEDGER_DRAIN_TIMEOUT_MS").div_ceil(1000);
    let grace_s = number(&deployment, "terminationGracePeriodSeconds");
    assert!(
        grace_s > sleep_s + drain_s,
        "terminationGracePeriodSeconds {grace_s} must exceed preStop {sleep_s} s + drain {drain_s} s"
    );

    // Settings and the database URL.
    assert_eq!(scalar(&config, "JOBLEDGER_LOG_FORMAT"), "json");
    assert_eq!(
        scalar(block(container, "configMapRef"), "name"),
        scalar(&config, "name")
    );
    let secret = read("secret.yaml");
    let secret_ref = block(container, "secretKeyRef");
    assert_eq!(scalar(secret_ref, "name"), scalar(&secret, "name"));
    assert_eq!(scalar(secret_ref, "key"), "DATABASE_URL");
    assert!(scalar(&secret, "DATABASE_URL").contains("PLACEHOLDER"));
    assert!(secret.contains("PLACEHOLDER - DO NOT DEPLOY AS IS"));
}

#[test]
fn pods_run_locked_down_and_bounded() {
    let deployment = read("deployment.yaml");
    let container = block(&deployment, "containers");
    assert_eq!(scalar(container, "image"), "jobledger:latest");

    // The Dockerfile's user; no root, no privilege, no writable image.
    let dockerfile =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("Dockerfile"))
            .expect("Dockerfile");
    assert!(dockerfile.contains("USER 10001:10001"));
    let pod_security = block(&deployment, "securityContext");
    assert_eq!(scalar(pod_security, "runAsNonRoot"), "true");
    assert_eq!(scalar(pod_security, "runAsUser"), "10001");
    assert_eq!(
        scalar(block(pod_security, "seccompProfile"), "type"),
        "RuntimeDefault"
    );
    let security = block(container, "securityContext");
    assert_eq!(scalar(security, "allowPrivilegeEscalation"), "false");
    assert_eq!(scalar(security, "readOnlyRootFilesystem"), "true");
    assert_eq!(scalar(security, "runAsNonRoot"), "true");
    assert_eq!(scalar(security, "runAsUser"), "10001");
    assert_eq!(scalar(block(security, "capabilities"), "drop"), "[\"ALL\"]");

    let resources = block(container, "resources");
    for (part, cpu, memory) in [("requests", "100m", "64Mi"), ("limits", "1", "256Mi")] {
        let limits = block(resources, part);
        assert_eq!(scalar(limits, "cpu"), cpu, "{part}");
        assert_eq!(scalar(limits, "memory"), memory, "{part}");
    }

    // The budget leaves room to evict one pod at a time.
    let replicas = number(&deployment, "replicas");
    let pdb = read("poddisruptionbudget.yaml");
    assert!(replicas >= 2);
    assert!(number(&pdb, "minAvailable") < replicas);

    let service = read("service.yaml");
    let port = block(&service, "ports");
    assert_eq!(scalar(port, "name"), "grpc");
    assert_eq!(scalar(port, "port"), "50051");
    assert_eq!(scalar(port, "appProtocol"), "grpc");
    assert_eq!(scalar(&service, "type"), "ClusterIP");
}
