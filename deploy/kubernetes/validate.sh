#!/usr/bin/env bash
# Validate the Kubernetes manifests against the API schemas of a pinned Kubernetes version.
#
#   deploy/kubernetes/validate.sh            every resource kustomization.yaml lists
#   deploy/kubernetes/validate.sh FILE...    just these files
#
# Uses kubernetes-validate from PyPI (pinned in validator-requirements.txt), installed on
# first use into a virtualenv under target/ (override with JOBLEDGER_K8S_VALIDATOR_VENV);
# it bundles the schemas, so later runs need no network. K8S_VERSION picks another
# Kubernetes version (default 1.29.0; schemas for 1.25 to 1.37 are bundled). Validation
# is strict: unknown fields, wrong types, missing required fields and a kind/apiVersion
# without a schema in that Kubernetes version are all errors. Exit status: 0 when all is
# valid, 1 when anything is not, 2 when the validator cannot be installed.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
k8s_version="${K8S_VERSION:-1.29.0}"
requirements="$here/validator-requirements.txt"
venv="${JOBLEDGER_K8S_VALIDATOR_VENV:-$repo/target/kubernetes-validate-venv}"
py="$venv/bin/python"

# Install (or reinstall after a change of the pins). Concurrent runs, e.g. tests in
# parallel, wait for one another here instead of installing into one venv at once.
stamp="$(sha256sum "$requirements" | cut -d' ' -f1)"
mkdir -p "$(dirname "$venv")"
exec 9>"$venv.lock"
if command -v flock >/dev/null; then flock 9; fi
if [[ "$(cat "$venv/.installed" 2>/dev/null || true)" != "$stamp" ]]; then
  echo "validate.sh: installing kubernetes-validate into $venv" >&2
  rm -rf "$venv"
  if ! python3 -m venv "$venv" \
    || ! "$py" -m pip install --quiet --disable-pip-version-check --no-input -r "$requirements"; then
    echo "validate.sh: could not install the validator (needs python3 with venv and PyPI)" >&2
    exit 2
  fi
  echo "$stamp" >"$venv/.installed"
fi
exec 9>&-

if [[ $# -gt 0 ]]; then
  files=("$@")
else
  # The resources kustomization.yaml lists; every other manifest here must be among them.
  listed="$("$py" - "$here" <<'PY'
import os, sys, yaml
here = sys.argv[1]
with open(os.path.join(here, "kustomization.yaml")) as f:
    k = yaml.safe_load(f)
errors = []
if k.get("apiVersion") != "kustomize.config.k8s.io/v1beta1" or k.get("kind") != "Kustomization":
    errors.append("kustomization.yaml: not a kustomize.config.k8s.io/v1beta1 Kustomization")
listed = k.get("resources") or []
for name in listed:
    if not os.path.isfile(os.path.join(here, name)):
        errors.append(f"kustomization.yaml lists {name}, which does not exist")
for name in sorted(os.listdir(here)):
    if name.endswith((".yaml", ".yml")) and name != "kustomization.yaml" and name not in listed:
        errors.append(f"{name} is not listed in kustomization.yaml")
if errors:
    print("\n".join(errors), file=sys.stderr)
    sys.exit(1)
print("\n".join(os.path.join(here, n) for n in listed))
PY
  )" || { echo "validate.sh: kustomization.yaml and the manifests here disagree" >&2; exit 1; }
  [[ -n "$listed" ]] || { echo "validate.sh: kustomization.yaml lists no resources" >&2; exit 1; }
  mapfile -t files <<<"$listed"
fi

status=0
output="$("$py" -m kubernetes_validate --kubernetes-version "$k8s_version" --strict "${files[@]}" 2>&1)" || status=$?
printf '%s\n' "$output"
# kubernetes-validate only warns (exit 0) when it has no schema for a kind/apiVersion:
# a misspelt kind or an API removed in this Kubernetes version. That is an error here.
if [[ $status -eq 0 ]] && grep -q '^WARN' <<<"$output"; then status=1; fi
if [[ $status -ne 0 ]]; then
  echo "validate.sh: INVALID against Kubernetes $k8s_version" >&2
  exit 1
fi
echo "validate.sh: ${#files[@]} manifest(s) valid against Kubernetes $k8s_version (kubernetes-validate, strict)"
