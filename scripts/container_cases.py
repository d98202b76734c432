#!/usr/bin/env python3
"""The stack's cases under Docker's swarm mode: deploys deploy/compose/compose.yaml (images from
scripts/docker-images.sh), publishes a first version, then runs each case under load from the
client container and prints a markdown table case → expected → observed. Exits 1 if a case
failed. Leaves no stack behind (and leaves swarm mode if it started it).

    python3 scripts/container_cases.py [--tag latest] [--keep]

Cases: (a) a training job submitted over gRPC to the trainer publishes to S3 and all three
replicas serve it within the poll interval, no failed call; (b) a rolling update (start-first)
under load: no lost text, no failed call, how long it took; (c) a replica killed under load:
only retried UNAVAILABLE, the replica replaced and load spread again; (d) a replica cut off from
S3 for 60 s keeps serving its version and stays healthy, and follows the alias once reconnected;
(e) scale 1 → 3 → 1 under load: per-replica share and texts/s at each step, no failed call on
scale-in; (f) long-lived pinned clients (one connection each, as behind an L4 balancer): the
per-replica share after scaling out, without and with a server-side maximum connection age;
(g) batch scoring as an Indexed Job: three `predictor batch` containers with JOB_COMPLETION_INDEX
0-2 share the parts of an input in the stack's S3, each row scored once, the manifest names the
served version; a rerun of one index skips its finished parts.
"""
import argparse
import json
import os
import subprocess
import sys
import threading
import time

STACK = "gecases"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOKEN = "stack-throwaway-token"
POLL_SECS = 2.0
MAX_AGE_SECS = 10
WINDOW_SECS = 6.0  # how long requests are counted per replica for a share


def sh(*args, check=True, timeout=600, env=None):
    r = subprocess.run(args, capture_output=True, text=True, timeout=timeout, env=env)
    if check and r.returncode != 0:
        raise RuntimeError(f"{' '.join(args)}: {r.stderr.strip() or r.stdout.strip()}")
    return r.stdout.strip()


def log(message):
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def service(name):
    return f"{STACK}_{name}"


def containers(name):
    out = sh("docker", "ps", "-q", "--filter", f"label=com.docker.swarm.service.name={service(name)}")
    return out.split() if out else []


def health(cid):
    return sh("docker", "inspect", "-f", "{{if .State.Health}}{{.State.Health.Status}}{{end}}", cid, check=False)


def wait(what, predicate, timeout, interval=1.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")


def client():
    ids = containers("client")
    if not ids:
        raise RuntimeError("no client container")
    return ids[0]


def in_client(*cmd, timeout=600, check=True):
    return sh("docker", "exec", client(), *cmd, timeout=timeout, check=check)


def tool(script, *args, timeout=600, check=True):
    return in_client("python", f"/opt/tools/scripts/{script}", *args, timeout=timeout, check=check)


def replicas():
    return json.loads(tool("replicas.py", "predictor") or "{}")


def train(seed):
    out = tool("train.py", "trainer:50052", TOKEN, "--seed", str(seed), "--train-limit", "160",
               "--dev-limit", "80", "--test-limit", "40", timeout=900, check=False)
    return json.loads(out.splitlines()[-1]) if out else {"state": "no output"}


class Load:
    """load.py running in the client container until stopped."""

    def __init__(self, name, workers=4, policy="round_robin", seconds=900):
        self.name = name
        self.stop_file = f"/tmp/{name}.stop"
        in_client("sh", "-c", f"rm -f {self.stop_file} /tmp/{name}.json")
        # Round robin over every replica (the name resolves to each, as a headless Service);
        # pinned clients go through the L4 balancer, one connection each.
        target = "dns:///predictor:50051" if policy == "round_robin" else "dns:///l4:50051"
        sh("docker", "exec", "-d", client(), "sh", "-c",
           f"python /opt/tools/scripts/load.py {target} {seconds} --workers {workers} "
           f"--policy {policy} --stop {self.stop_file} > /tmp/{name}.json 2>/tmp/{name}.err")

    def stop(self):
        in_client("touch", self.stop_file)
        out = wait(f"load {self.name} to report", lambda: in_client("cat", f"/tmp/{self.name}.json", check=False),
                   60, 0.5)
        return json.loads(out)


def serving_versions():
    return {ip: r["version"] for ip, r in replicas().items()}


def all_on(version, count):
    current = serving_versions()
    return current if len(current) == count and set(current.values()) == {version} else None


def shares(before, after):
    """Per-replica share of the requests counted between two replicas() readings."""
    deltas = {ip: (after[ip]["requests"] or 0) - (before.get(ip, {}).get("requests") or 0) for ip in after}
    total = sum(max(d, 0) for d in deltas.values()) or 1
    return {ip: round(max(d, 0) / total, 2) for ip, d in sorted(deltas.items())}


def case_a(results):
    expected = "job SUCCEEDED, all 3 replicas on the new version within the poll interval (+ load), no failed call"
    load = Load("a")
    job = train(seed=43)
    done = time.monotonic()
    try:
        wait("replicas on the new version", lambda: all_on(job.get("version"), 3), 60, 0.2)
        switch = time.monotonic() - done
    except TimeoutError:
        switch = None
    time.sleep(2)
    report = load.stop()
    ok = job.get("state") == "JOB_STATE_SUCCEEDED" and switch is not None and switch <= POLL_SECS + 8 \
        and report["failed"] == 0
    results.append(("(a) training job over gRPC → S3 → 3 replicas", expected,
                    f"job {job.get('state')} in {job.get('seconds')} s, version {job.get('version')}; all replicas on it "
                    f"{'%.1f s' % switch if switch is not None else 'never'} after; load: {report['calls']} calls, "
                    f"{report['failed']} failed, {report['retried']} retried, versions {list(report['versions'])}", ok))
    return job.get("version")


def case_b(results):
    expected = "no lost text, no failed call (UNAVAILABLE resent), every replica replaced"
    before = set(containers("predictor"))
    load = Load("b")
    t0 = time.monotonic()
    sh("docker", "service", "update", "--force", "--detach=false", "--update-order", "start-first",
       service("predictor"), timeout=900)
    took = time.monotonic() - t0
    time.sleep(2)
    report = load.stop()
    after = set(containers("predictor"))
    ok = report["failed"] == 0 and not (before & after) and len(after) == 3
    results.append(("(b) rolling update, start-first, under load", expected,
                    f"roll took {took:.1f} s; {report['calls']} calls / {report['texts']} texts, {report['failed']} failed, "
                    f"{report['retried']} retried after UNAVAILABLE; replicas replaced {len(before - after)} of {len(before)}",
                    ok))


def case_c(results):
    expected = "only UNAVAILABLE (resent) seen, the replica replaced, load spread again over 3"
    load = Load("c")
    time.sleep(3)
    victim = containers("predictor")[0]
    sh("docker", "kill", victim)
    t0 = time.monotonic()
    wait("a replacement replica", lambda: len([c for c in containers("predictor")
                                               if c != victim and health(c) == "healthy"]) == 3, 120, 0.5)
    replaced = time.monotonic() - t0
    # Clients re-resolve when connections reach the server's maximum age (MAX_AGE_SECS here).
    time.sleep(MAX_AGE_SECS + 2)
    before = replicas()
    time.sleep(WINDOW_SECS)
    after = replicas()
    report = load.stop()
    spread = shares(before, after)
    ok = report["failed"] == 0 and len(spread) == 3 and all(s > 0.1 for s in spread.values())
    results.append(("(c) `docker kill` of one replica under load", expected,
                    f"replaced in {replaced:.1f} s; {report['calls']} calls, {report['failed']} failed, "
                    f"{report['retried']} retried; share of calls afterwards {list(spread.values())}", ok))


def case_d(results, current):
    expected = "cut-off replica keeps serving its version, stays healthy; reconnected, follows the alias"
    network = f"{STACK}_store"
    victim = containers("predictor")[0]
    ip = sh("docker", "inspect", "-f", f"{{{{(index .NetworkSettings.Networks \"{STACK}_front\").IPAddress}}}}", victim)
    sh("docker", "network", "disconnect", network, victim)
    t0 = time.monotonic()
    load = Load("d")
    job = {}
    trainer = threading.Thread(target=lambda: job.update(train(seed=44)))
    trainer.start()
    healthy_during, version_during = [], []
    # Cut off for 60 s, and at least until the new version is published.
    while time.monotonic() - t0 < 60 or trainer.is_alive():
        healthy_during.append(health(victim))
        version_during.append(replicas().get(ip, {}).get("version"))
        time.sleep(3)
    cut_off = time.monotonic() - t0
    sh("docker", "network", "connect", network, victim)
    t1 = time.monotonic()
    try:
        wait("the reconnected replica on the new version", lambda: serving_versions().get(ip) == job.get("version"),
             90, 0.5)
        follow = time.monotonic() - t1
    except TimeoutError:
        follow = None
    report = load.stop()
    ok = set(healthy_during) == {"healthy"} and set(version_during) == {current} \
        and job.get("state") == "JOB_STATE_SUCCEEDED" and follow is not None and report["failed"] == 0
    results.append(("(d) one replica cut off from S3 (`docker network disconnect`)", expected,
                    f"cut off {cut_off:.0f} s: health {sorted(set(healthy_during))}, version "
                    f"{sorted(set(map(str, version_during)))} while {job.get('version')} was published; reconnected: "
                    f"on it after {'%.1f s' % follow if follow is not None else 'never'}; {report['calls']} calls, "
                    f"{report['failed']} failed", ok))
    return job.get("version")


def case_e(results):
    expected = "per-replica share follows the scale, no failed call on scale-in"
    load = Load("e")
    steps = []
    for n in (1, 3, 1):
        sh("docker", "service", "scale", "--detach=false", f"{service('predictor')}={n}", timeout=300)
        wait(f"{n} healthy replicas", lambda: len([c for c in containers("predictor") if health(c) == "healthy"]) == n,
             120, 0.5)
        time.sleep(MAX_AGE_SECS + 2 if n > 1 else 3)  # the connection age brings clients to new replicas
        before = replicas()
        time.sleep(WINDOW_SECS)
        after = replicas()
        total = sum(max((after[ip]["requests"] or 0) - (before.get(ip, {}).get("requests") or 0), 0) for ip in after)
        steps.append((n, list(shares(before, after).values()), round(total / WINDOW_SECS, 1)))
    report = load.stop()
    ok = report["failed"] == 0 and len(steps[1][1]) == 3 and all(s > 0.1 for s in steps[1][1])
    results.append(("(e) scale 1 → 3 → 1 under load", expected,
                    "; ".join(f"{n} replica(s): share {s}, {r} calls/s" for n, s, r in steps)
                    + f"; {report['failed']} failed, {report['retried']} retried", ok))


def case_f(results):
    expected = "pinned clients stay on one replica without a maximum connection age; spread with one"
    observed = []
    spread_with_age = None
    for age in (0, MAX_AGE_SECS):
        sh("docker", "service", "update", "--detach=false", "--update-delay", "0s", "--update-monitor", "1s",
           "--env-add", f"PREDICTOR_MAX_CONNECTION_AGE_SECS={age}", "--replicas", "1", service("predictor"),
           timeout=600)
        wait("1 healthy replica", lambda: len([c for c in containers("predictor") if health(c) == "healthy"]) == 1,
             120, 0.5)
        load = Load(f"f{age}", workers=6, policy="pick_first")
        time.sleep(4)
        sh("docker", "service", "scale", "--detach=false", f"{service('predictor')}=3", timeout=300)
        wait("3 healthy replicas", lambda: len([c for c in containers("predictor") if health(c) == "healthy"]) == 3,
             120, 0.5)
        time.sleep(age + 5 if age else 8)
        before = replicas()
        time.sleep(WINDOW_SECS)
        spread = list(shares(before, replicas()).values())
        report = load.stop()
        observed.append(f"max age {age or 'none'}: share {spread} ({report['failed']} failed)")
        if age:
            spread_with_age = spread
        else:
            spread_without = spread
    ok = max(spread_without) > 0.9 and spread_with_age is not None and max(spread_with_age) < 0.9
    results.append(("(f) 6 long-lived pinned clients (pick_first), scaled 1 → 3", expected, "; ".join(observed), ok))


TAG = "latest"
S3_ENV = ["AWS_ENDPOINT_URL=http://s3:5000", "AWS_ACCESS_KEY_ID=moto", "AWS_SECRET_ACCESS_KEY=moto",
          "AWS_REGION=us-east-1", "AWS_ALLOW_HTTP=true"]
S3_PRELUDE = ("import boto3, json\n"
              "s3 = boto3.client('s3', endpoint_url='http://s3:5000', aws_access_key_id='moto',"
              " aws_secret_access_key='moto', region_name='us-east-1')\n")


def s3_python(code):
    """Runs Python `code` in a throw-away tools container on the store network, with `s3` a boto3
    client of the stack's S3 server; returns what it printed."""
    return sh("docker", "run", "--rm", "--network", f"{STACK}_store", f"goemotions-tools:{TAG}",
              "python", "-c", S3_PRELUDE + code, timeout=300)


def batch_container(index, shards, detach=True):
    env = [a for e in S3_ENV + [f"JOB_COMPLETION_INDEX={index}", f"BATCH_SHARD_COUNT={shards}"] for a in ("-e", e)]
    return sh("docker", "run", *(["-d"] if detach else ["--rm"]), "--no-healthcheck", "--read-only", "--tmpfs", "/tmp",
              "--network", f"{STACK}_store", *env, f"goemotions-predictor:{TAG}", "batch",
              "--model", "s3://registry/goemotions/models/goemotions/aliases/latest",
              "--input", "s3://registry/batch/in/", "--output", "s3://registry/batch/out/",
              "--id-column", "id", "--rows-per-part", "100", "--threads", "1", timeout=600)


def case_g(results, current):
    expected = "3 containers share 9 parts 3/3/3, every row once, manifest on the served version; rerun skips"
    rows = 900
    s3_python(
        "lines = [json.dumps({'id': f'c{i}', 'text': t + f' ({i})'}) for i, t in enumerate(\n"
        "    ['thanks so much, this made my day', 'I am so angry about this', 'that is really sad news',\n"
        "     'wow, I did not expect that at all', 'meh, whatever'] * %d)]\n"
        "s3.put_object(Bucket='registry', Key='batch/in/comments.jsonl', Body='\\n'.join(lines).encode())\n" % (rows // 5))
    t0 = time.monotonic()
    ids = [batch_container(i, 3) for i in range(3)]
    codes = [sh("docker", "wait", cid, timeout=600) for cid in ids]
    took = time.monotonic() - t0
    logs = [sh("docker", "logs", cid, check=False) for cid in ids]
    for cid in ids:
        sh("docker", "rm", "-f", cid, check=False)
    scored = [next((line.split()[1] for line in out.splitlines() if "scored here" in line), "?") for out in logs]
    found = json.loads(s3_python(
        "m = json.loads(s3.get_object(Bucket='registry', Key='batch/out/_manifest.json')['Body'].read())\n"
        "ids = []\n"
        "for p in m['parts']:\n"
        "    body = s3.get_object(Bucket='registry', Key='batch/out/' + p['name'])['Body'].read().decode()\n"
        "    ids += [json.loads(l)['id'] for l in body.splitlines()]\n"
        "print(json.dumps({'version': m['model']['version'], 'parts': len(m['parts']), 'rows': m['rows_scored'],\n"
        "                  'ids': len(ids), 'unique': len(set(ids))}))\n").splitlines()[-1])
    rerun = batch_container(0, 3, detach=False)
    skipped = "0 scored here, 3 already done" in rerun
    ok = codes == ["0", "0", "0"] and scored == ["3", "3", "3"] and found["version"] == current \
        and found["parts"] == 9 and found["ids"] == found["unique"] == rows and skipped
    results.append(("(g) batch scoring, 3 containers as an Indexed Job", expected,
                    f"exit codes {codes}, parts scored per index {scored} in {took:.1f} s; manifest: version "
                    f"{found['version']} ({'the served one' if found['version'] == current else 'NOT the served one'}), "
                    f"{found['parts']} parts, {found['ids']} rows ({found['unique']} distinct) of {rows}; rerun of index 0 "
                    f"{'skipped its 3 parts' if skipped else 'did not skip: ' + rerun[-200:]}", ok))


def main():
    global TAG
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tag", default="latest")
    p.add_argument("--keep", action="store_true", help="leave the stack running")
    p.add_argument("--cases", default="abcdefg", help="which cases to run (letters; the first version is always published)")
    args = p.parse_args()
    TAG = args.tag
    started_swarm = False
    if sh("docker", "info", "-f", "{{.Swarm.LocalNodeState}}") != "active":
        sh("docker", "swarm", "init")
        started_swarm = True
    env = dict(os.environ, PREDICTOR_REPLICAS="0", PREDICTOR_MAX_CONNECTION_AGE_SECS=str(MAX_AGE_SECS),
               TRAINER_TOKEN=TOKEN, PREDICTOR_IMAGE=f"goemotions-predictor:{args.tag}",
               TRAINER_IMAGE=f"goemotions-trainer:{args.tag}", TOOLS_IMAGE=f"goemotions-tools:{args.tag}")
    results = []
    t_start = time.monotonic()
    try:
        log("deploying the stack (swarm mode)")
        sh("docker", "stack", "deploy", "-c", os.path.join(ROOT, "deploy/compose/compose.yaml"), STACK, env=env)
        wait("trainer healthy", lambda: any(health(c) == "healthy" for c in containers("trainer")), 180)
        wait("client up", lambda: containers("client"), 120)
        log("publishing the first version")
        first = train(seed=42)
        if first.get("state") != "JOB_STATE_SUCCEEDED":
            raise RuntimeError(f"the first training job did not succeed: {first}")
        sh("docker", "service", "scale", "--detach=false", f"{service('predictor')}=3", timeout=300)
        wait("3 replicas serving the first version", lambda: all_on(first["version"], 3), 180)
        current = first["version"]
        for letter in args.cases:
            log(f"({letter})")
            if letter == "a":
                current = case_a(results)
            elif letter == "d":
                current = case_d(results, current)
            elif letter == "g":
                case_g(results, current)
            else:
                {"b": case_b, "c": case_c, "e": case_e, "f": case_f}[letter](results)
    except Exception as e:  # a case that could not run is a failure with its reason
        results.append(("stack", "deployed and the cases ran", f"{type(e).__name__}: {e}", False))
    finally:
        if not args.keep:
            sh("docker", "stack", "rm", STACK, check=False)
            # Networks go once their containers are gone.
            for _ in range(60):
                if not sh("docker", "network", "ls", "-q", "--filter", f"name={STACK}_", check=False):
                    break
                time.sleep(1)
            if started_swarm:
                sh("docker", "swarm", "leave", "--force", check=False)
    print("| case | expected | observed | |")
    print("|---|---|---|---|")
    for case, expected, observed, ok in results:
        print(f"| {case} | {expected} | {observed} | {'ok' if ok else 'FAILED'} |")
    failed = sum(1 for r in results if not r[3])
    print(f"\n{len(results)} cases, {len(results) - failed} passed, {failed} failed "
          f"({time.monotonic() - t_start:.0f} s, swarm mode, {time.strftime('%Y-%m-%d')})")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
