"""Checks the Helm chart: lint, render several real variants, and assert what matters in the
rendered objects (probes, security context, the single-streamer design, secrets only by
reference), that the gateway itself accepts the rendered config, and that every built-in
object passes Kubernetes schema validation.

Run by scripts/test.sh with HELM (the helm binary) and GATEWAY_BIN (the gateway binary).
"""

import os
import re
import subprocess
import tempfile
import unittest
from pathlib import Path

import yaml
import kubernetes_validate

ROOT = Path(__file__).resolve().parents[3]
CHART = ROOT / "deploy" / "helm" / "gateway"
HELM = os.environ.get("HELM", "helm")
GATEWAY = os.environ.get("GATEWAY_BIN", str(ROOT / "target" / "debug" / "gateway"))
KUBERNETES_VERSION = "1.30.0"

VARIANTS = {
    "default": [],
    "ha": ["--set", "replicas=3"],
    "ha-shared-logs": [
        "--set", "replicas=2",
        "--set", "persistence.existingClaim=gateway-logs",
        "--set-json", 'persistence.accessModes=["ReadWriteMany"]',
    ],
    "cache": ["--set", "cache.enabled=true"],
    "existing-secrets": [
        "--set", "database.existingSecret=prod-db", "--set", "database.urlKey=url",
        "--set", "jwt.existingSecret=prod-jwt", "--set", "jwt.secretKey=", "--set", "jwt.publicKeyKey=public.pem",
        "--set-json", 'rules=[{"name":"public.todos","scope":"org_id = :org_id","write":["insert","update","delete"],'
                      '"conflict":"reject_stale","version_column":"version"}]',
    ],
    "monitoring": [
        "--set", "monitoring.serviceMonitor.enabled=true", "--set", "monitoring.prometheusRule.enabled=true",
    ],
    "cleanup": ["--set", "cleanup.dropSlot=true", "--set", "cleanup.dropPublication=true"],
}

# Values the schema must refuse, with a word of the expected complaint.
REFUSED = {
    "no replicas": (["--set", "replicas=0"], "replicas"),
    "a plaintext database URL": (["--set", "database.url=postgres://u:p@db/app"], "url"),
    "auth none in a pod": (["--set", "config.auth=none"], "auth"),
    "an unknown setting": (["--set", "config.listen_address=x"], "listen_address"),
    "a shared claim that cannot be shared": (
        ["--set", "replicas=2", "--set", "persistence.existingClaim=logs"], "ReadWriteMany"),
    "a slot the gateway would not own": (["--set", "config.slot=other"], "slot"),
    "metrics without the headless Service": (
        ["--set", "monitoring.serviceMonitor.enabled=true", "--set", "headlessService.enabled=false"], "headless"),
}

# Values the README documents as a whole rather than key by key.
DOCUMENTED_WHOLE = {
    "resources", "podSecurityContext", "securityContext", "cache.resources",
    "probes.startup", "probes.liveness", "probes.readiness",
}

# Set by the chart itself (or from Secrets), not through values.config.
CHART_MANAGED = {"listen", "data_dir", "database_url", "jwt_secret", "jwt_public_key", "shared_cache_by_caller", "advertise_url"}


def helm(*args):
    return subprocess.run([HELM, *args], capture_output=True, text=True)


def render(extra):
    out = helm("template", "t", str(CHART), "--namespace", "sync", *extra)
    if out.returncode != 0:
        raise AssertionError(f"helm template {' '.join(extra)} failed:\n{out.stderr}")
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def of_kind(objects, kind):
    return [o for o in objects if o["kind"] == kind]


def one(objects, kind):
    found = of_kind(objects, kind)
    assert len(found) == 1, f"expected one {kind}, got {len(found)}"
    return found[0]


def gateway_toml(objects):
    maps = [o for o in of_kind(objects, "ConfigMap") if "gateway.toml" in o.get("data", {})]
    assert len(maps) == 1, "one gateway config for every pod"
    return maps[0]["data"]["gateway.toml"]


class Chart(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.rendered = {name: render(extra) for name, extra in VARIANTS.items()}

    def test_lint_passes_for_every_variant(self):
        for name, extra in VARIANTS.items():
            out = helm("lint", "--strict", str(CHART), *extra)
            self.assertEqual(out.returncode, 0, f"{name}: {out.stdout}{out.stderr}")

    def test_the_schema_refuses_bad_values_with_the_reason(self):
        for name, (extra, word) in REFUSED.items():
            out = helm("template", "t", str(CHART), *extra)
            self.assertNotEqual(out.returncode, 0, f"{name} was accepted")
            self.assertIn(word, out.stderr, f"{name}: {out.stderr}")

    def test_every_pod_has_probes_and_a_locked_down_security_context(self):
        for name, objects in self.rendered.items():
            workloads = of_kind(objects, "StatefulSet") + of_kind(objects, "Deployment") + of_kind(objects, "Job")
            for w in workloads:
                pod = w["spec"]["template"]["spec"]
                where = f"{name}: {w['kind']} {w['metadata']['name']}"
                self.assertTrue(pod["securityContext"]["runAsNonRoot"], where)
                self.assertFalse(pod["automountServiceAccountToken"], where)
                for c in pod["containers"]:
                    sc = c["securityContext"]
                    self.assertFalse(sc["allowPrivilegeEscalation"], where)
                    self.assertTrue(sc["readOnlyRootFilesystem"], where)
                    self.assertEqual(sc["capabilities"]["drop"], ["ALL"], where)
                    if w["kind"] != "Job":
                        self.assertIn("livenessProbe", c, where)
                        self.assertIn("readinessProbe", c, where)
            gateway = one(objects, "StatefulSet")["spec"]["template"]["spec"]["containers"][0]
            self.assertEqual(gateway["startupProbe"]["httpGet"]["path"], "/healthz", name)
            self.assertEqual(gateway["livenessProbe"]["httpGet"]["path"], "/healthz", name)
            self.assertEqual(gateway["readinessProbe"]["httpGet"]["path"], "/readyz", name)
            self.assertIn({"name": "data", "mountPath": "/data"}, gateway["volumeMounts"], name)

    def test_one_streamer_many_standbys(self):
        for name, objects in self.rendered.items():
            sts = one(objects, "StatefulSet")
            spec = sts["spec"]
            # Standbys are not ready by design; ordered start would wait for them forever.
            self.assertEqual(spec["podManagementPolicy"], "Parallel", name)
            # No other gateway workload that could stream from the slot.
            for d in of_kind(objects, "Deployment"):
                self.assertEqual(d["metadata"]["labels"]["app.kubernetes.io/component"], "cache", name)
            # Every pod reads one config, so all contend for the same slot and its lock.
            env = {e["name"]: e for e in spec["template"]["spec"]["containers"][0]["env"]}
            self.assertNotIn("GATEWAY_SLOT", env, f"{name}: a per-pod slot would defeat the lock")
            # Standbys forward new shapes to the streaming pod at its own address.
            self.assertEqual(env["POD_IP"]["valueFrom"]["fieldRef"]["fieldPath"], "status.podIP", name)
            self.assertEqual(env["GATEWAY_ADVERTISE_URL"]["value"], "http://$(POD_IP):3000", name)
            self.assertIn('slot = "gateway"', gateway_toml(objects), name)
            # Clients reach only the ready (streaming) pod.
            services = {s["metadata"]["name"]: s["spec"] for s in of_kind(objects, "Service")}
            self.assertNotIn("publishNotReadyAddresses", services["t-gateway"], name)
            self.assertTrue(services["t-gateway-headless"]["publishNotReadyAddresses"], name)
            pdb = one(objects, "PodDisruptionBudget")["spec"]
            self.assertEqual(pdb["unhealthyPodEvictionPolicy"], "AlwaysAllow", f"{name}: standbys must stay evictable")
        self.assertEqual(one(self.rendered["ha"], "StatefulSet")["spec"]["replicas"], 3)
        shared = one(self.rendered["ha-shared-logs"], "StatefulSet")["spec"]
        self.assertNotIn("volumeClaimTemplates", shared, "shared logs: one claim for every pod")
        claim = [v for v in shared["template"]["spec"]["volumes"] if v["name"] == "data"][0]
        self.assertEqual(claim["persistentVolumeClaim"]["claimName"], "gateway-logs")
        per_pod = one(self.rendered["ha"], "StatefulSet")["spec"]["volumeClaimTemplates"][0]
        self.assertEqual(per_pod["spec"]["accessModes"], ["ReadWriteOnce"])

    def test_secrets_are_only_referenced(self):
        for name, objects in self.rendered.items():
            self.assertEqual(of_kind(objects, "Secret"), [], f"{name}: the chart creates no Secret")
            text = yaml.safe_dump_all(objects)
            self.assertNotRegex(text, r"postgres(ql)?://", f"{name}: a database URL in plain text")
            self.assertNotIn("database_url", gateway_toml(objects), name)
            self.assertNotIn("jwt_secret", gateway_toml(objects), name)
            for w in of_kind(objects, "StatefulSet") + of_kind(objects, "Job"):
                for c in w["spec"]["template"]["spec"]["containers"]:
                    for e in c["env"]:
                        if e["name"] in ("DATABASE_URL", "GATEWAY_JWT_SECRET"):
                            self.assertIn("secretKeyRef", e.get("valueFrom", {}), f"{name}: {e}")
        pod = one(self.rendered["existing-secrets"], "StatefulSet")["spec"]["template"]["spec"]
        env = {e["name"]: e for e in pod["containers"][0]["env"]}
        self.assertEqual(env["DATABASE_URL"]["valueFrom"]["secretKeyRef"], {"name": "prod-db", "key": "url"})
        self.assertNotIn("GATEWAY_JWT_SECRET", env)
        self.assertEqual(env["GATEWAY_JWT_PUBLIC_KEY"]["value"], "/etc/gateway-jwt/public-key.pem")
        jwt = [v for v in pod["volumes"] if v["name"] == "jwt"][0]["secret"]
        self.assertEqual((jwt["secretName"], jwt["items"][0]["key"]), ("prod-jwt", "public.pem"))

    def test_values_mirror_the_gateways_config_names_and_the_gateway_accepts_the_result(self):
        help_text = subprocess.run([GATEWAY, "serve", "--help"], capture_output=True, text=True, check=True).stdout
        flags = {f.replace("-", "_") for f in re.findall(r"^\s+--([a-z][a-z0-9-]+)", help_text, re.M)}
        settings = flags - {"config", "print_config", "help"}
        values = yaml.safe_load((CHART / "values.yaml").read_text())
        self.assertEqual(set(values["config"]) | CHART_MANAGED, settings)
        for name, objects in self.rendered.items():
            with tempfile.NamedTemporaryFile("w", suffix=".toml") as f:
                f.write(gateway_toml(objects))
                f.flush()
                out = subprocess.run(
                    [GATEWAY, "serve", "--config", f.name, "--database-url", "postgres://u@db/app",
                     "--jwt-secret", "x", "--print-config"], capture_output=True, text=True)
            self.assertEqual(out.returncode, 0, f"{name}: {out.stderr}")
            self.assertIn('listen = "0.0.0.0:3000"  # config file', out.stdout, name)
        rules = gateway_toml(self.rendered["existing-secrets"])
        self.assertIn("[[table]]", rules)
        self.assertIn('conflict = "reject_stale"', rules)

    def test_the_cache_tier_collapses_requests_per_token_and_passes_sse_through(self):
        objects = self.rendered["cache"]
        conf = [o for o in of_kind(objects, "ConfigMap") if o["metadata"]["name"] == "t-gateway-cache"][0]
        nginx = conf["data"]["nginx.conf"]
        self.assertIn("proxy_cache_lock on;", nginx)
        self.assertRegex(nginx, r"proxy_cache_key [^;]*\$http_authorization")
        self.assertIn("proxy_cache_bypass $sse;", nginx)
        self.assertIn("server t-gateway:3000;", nginx)
        lock_timeout = int(re.search(r"proxy_cache_lock_timeout (\d+)s;", nginx).group(1))
        self.assertGreater(lock_timeout * 1000, 20000, "waiters outlast a long-poll")
        deployment = one(objects, "Deployment")
        self.assertEqual(deployment["spec"]["template"]["spec"]["containers"][0]["command"][0], "nginx")
        service = [s for s in of_kind(objects, "Service") if s["metadata"]["name"] == "t-gateway-cache"]
        self.assertEqual(len(service), 1)
        self.assertEqual(of_kind(self.rendered["default"], "Deployment"), [], "no cache tier unless asked")
        # Only a tier that keys on the caller may store authenticated answers.
        self.assertIn("shared_cache_by_caller = true", gateway_toml(objects))
        self.assertNotIn("shared_cache_by_caller", gateway_toml(self.rendered["default"]))

    def test_monitoring_scrapes_every_pod_and_alerts_on_metrics_the_gateway_exports(self):
        objects = self.rendered["monitoring"]
        monitor = one(objects, "ServiceMonitor")["spec"]
        headless = [s for s in of_kind(objects, "Service") if s["metadata"]["name"] == "t-gateway-headless"][0]
        for k, v in monitor["selector"]["matchLabels"].items():
            self.assertEqual(headless["metadata"]["labels"].get(k), v, "selects the headless Service")
        self.assertEqual(monitor["endpoints"][0]["path"], "/metrics")
        rules = one(objects, "PrometheusRule")["spec"]["groups"][0]["rules"]
        exported = set(re.findall(r'"(gateway_[a-z_]+)"', (ROOT / "gateway/src/telemetry.rs").read_text()))
        used = set()
        for r in rules:
            used |= set(re.findall(r"gateway_[a-z_]+", r["expr"]))
            self.assertIn("description", r["annotations"], r["alert"])
        self.assertTrue(used, "the alerts use metrics")
        self.assertLessEqual(used, exported, "every alert reads a metric the gateway exports")
        for needed in ("gateway_slot_retained_wal_bytes", "gateway_replication_lag_seconds", "gateway_wal_budget_stage"):
            self.assertIn(needed, used)

    def test_uninstall_drops_the_slot_only_when_asked(self):
        self.assertEqual(of_kind(self.rendered["default"], "Job"), [])
        job = one(self.rendered["cleanup"], "Job")
        self.assertEqual(job["metadata"]["annotations"]["helm.sh/hook"], "post-delete")
        args = job["spec"]["template"]["spec"]["containers"][0]["args"]
        self.assertEqual(args[:2], ["slot", "drop"])
        self.assertIn("--drop-publication", args)
        self.assertIn("--wait-s", args)

    def test_the_readme_documents_every_value(self):
        readme = (CHART / "README.md").read_text()
        values = yaml.safe_load((CHART / "values.yaml").read_text())

        def leaves(prefix, node):
            if isinstance(node, dict) and node and prefix not in DOCUMENTED_WHOLE:
                for k, v in node.items():
                    yield from leaves(f"{prefix}.{k}" if prefix else k, v)
            else:
                yield prefix

        for path in leaves("", values):
            self.assertTrue(f"`{path}" in readme, f"{path} is not in the chart README")

    def test_every_built_in_object_passes_kubernetes_schema_validation(self):
        validated = 0
        for name, objects in self.rendered.items():
            for o in objects:
                if o["apiVersion"].startswith("monitoring.coreos.com/"):
                    continue  # Prometheus Operator CRDs: checked by hand above
                try:
                    kubernetes_validate.validate(o, KUBERNETES_VERSION, strict=True)
                except kubernetes_validate.ValidationError as e:
                    self.fail(f"{name}: {o['kind']} {o['metadata']['name']}: {e.message} at {list(e.path)}")
                validated += 1
        self.assertGreater(validated, 30)


if __name__ == "__main__":
    unittest.main(verbosity=2)
