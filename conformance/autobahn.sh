#!/usr/bin/env bash
# Autobahn|Testsuite (wstest -m fuzzingserver, cases 1-10, on 127.0.0.1 only) against two echo
# clients, the bare websocket-client WebSocketApp (baseline) and wsbridge.Client(codec=RawCodec());
# prints a markdown table of both. See conformance/README.md.
#
# Usage (from the project root):  bash conformance/autobahn.sh
# Env:  OUT=dir          results (default ${TMPDIR:-/tmp}/wsbridge-autobahn-DATE)
#       ABT_PY27=python  a Python 2.7 interpreter (default: the newest 2.7 under `pyenv root`)
#       ABT_PY3=python3  the Python 3 (>= 3.10) for the clients' venv
#       ABT_VENV27, ABT_VENV3  the two venvs (default ${TMPDIR:-/tmp}/abt-venv, abt-py3; reused)
#       CASES='1.*,2.*'  the cases to run (default: sections 1-10)  PORT=n (default: a free one)
#       CASE_TIMEOUT=30 SLOW_TIMEOUT=20  per-case limits (s); RUN_LIMIT=1800 the whole run (s)
# Exit: 0 wsbridge has no FAILED case and is no worse than the baseline in any case;
#       1 otherwise; 2 the harness failed (setup, server, baseline).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
proj=$(cd "$here/.." && pwd)
tmp=${TMPDIR:-/tmp}
out=${OUT:-$tmp/wsbridge-autobahn-$(date +%Y%m%d-%H%M%S)}
deadline=$((SECONDS + ${RUN_LIMIT:-1800}))
venv27=${ABT_VENV27:-$tmp/abt-venv}
venv3=${ABT_VENV3:-$tmp/abt-py3}
py3="$venv3/bin/python"
export PYTHONDONTWRITEBYTECODE=1   # no __pycache__ in the checkout
mkdir -p "$out"

log() { echo "autobahn: $*" >&2; }
die() { log "$*"; exit 2; }
quiet_pip() { grep -v 'is ignored\|DEPRECATION' >&2 || true; }

# -- setup (idempotent): Python 2.7 venv with wstest, Python 3 venv with wsbridge's dependencies --
pins() { grep -v '^[#-]' "$1" | sed '/^$/d' | tr '[:upper:]' '[:lower:]' | sort; }
stamp27="$venv27/.stamp-pins-$(pins "$here/constraints-py27.txt" | sha1sum | cut -c1-12)"
if [ ! -f "$stamp27" ] && [ -x "$venv27/bin/pip" ] \
   && [ -z "$(comm -3 <(pins "$here/constraints-py27.txt") <("$venv27/bin/pip" freeze 2>/dev/null | grep -v '^[#-]' | tr '[:upper:]' '[:lower:]' | sort))" ]; then
  touch "$stamp27"   # an existing venv with exactly these pins
fi
if [ ! -f "$stamp27" ]; then
  py27=${ABT_PY27:-}
  if [ -z "$py27" ] && command -v pyenv >/dev/null; then
    py27=$(find "$(pyenv root)/versions" -maxdepth 3 -path '*/2.7*/bin/python' 2>/dev/null | sort -V | tail -1)
  fi
  [ -n "$py27" ] || py27=$(command -v python2.7 || true)
  if [ -z "$py27" ] || [ ! -x "$py27" ]; then die "no Python 2.7 (pyenv install 2.7.18, or set ABT_PY27)"; fi
  log "building $venv27 with $py27 (about a minute)"
  tools="$tmp/abt-tools"   # virtualenv < 20.22 still makes 2.7 venvs; installed for 2.7 itself, not in $HOME
  if [ ! -d "$tools/venv27/virtualenv" ]; then
    "$py27" -m pip install -q --disable-pip-version-check --target "$tools/venv27" 'virtualenv<20.22' 2>&1 | quiet_pip
  fi
  rm -rf "$venv27"
  PYTHONPATH="$tools/venv27" VIRTUALENV_OVERRIDE_APP_DATA="$tools/appdata" "$py27" -m virtualenv -q "$venv27" >&2 \
    || die "virtualenv failed for $venv27"
  "$venv27/bin/pip" install -q 'pip<21' 2>&1 | quiet_pip
  "$venv27/bin/pip" install -q -c "$here/constraints-py27.txt" 'autobahntestsuite==25.10.1' 2>&1 | quiet_pip
  "$venv27/bin/python" -c 'import autobahntestsuite, autobahn, twisted' 2>/dev/null \
    || die "autobahntestsuite did not install in $venv27"
  touch "$stamp27"
fi

stamp3="$venv3/.stamp-$(cat "$proj/setup.cfg" "$proj/pyproject.toml" 2>/dev/null | sha1sum | cut -c1-12)"
if [ ! -f "$stamp3" ]; then
  log "building $venv3 with the dependencies of $proj"
  rm -rf "$venv3"
  "${ABT_PY3:-python3}" -c 'import sys; sys.exit(sys.version_info < (3, 10))' || die "${ABT_PY3:-python3} is not Python >= 3.10"
  "${ABT_PY3:-python3}" -m venv "$venv3" || die "could not make $venv3"
  copy=$(mktemp -d "$tmp/abt-src.XXXXXX")   # install the project's dependencies from a copy: nothing built in the checkout
  tar -C "$proj" --exclude=.git --exclude=.venv --exclude='*.egg-info' --exclude=__pycache__ --exclude=build -cf - . | tar -C "$copy" -xf -
  "$venv3/bin/pip" install -q "$copy" wsaccel 2>&1 | quiet_pip
  "$venv3/bin/pip" uninstall -q -y wsbridge >&2 || true   # the clients import the checkout itself
  rm -rf "$copy"
  "$py3" -c 'import websocket, blinker, wsaccel' || die "dependencies missing in $venv3"
  touch "$stamp3"
fi

export PYTHONPATH="$proj"   # wsbridge from the checkout, as it is now
"$py3" -c 'import wsbridge' || die "wsbridge does not import from $proj"

# -- the fuzzing server ------------------------------------------------------------------------
port=${PORT:-$("$py3" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}
url="ws://127.0.0.1:$port"
"$py3" - "$out/spec.json" "$url" "$out/reports" "${CASES:-1.*,2.*,3.*,4.*,5.*,6.*,7.*,9.*,10.*}" <<'PY'
import json, sys
path, url, reports, cases = sys.argv[1:]
spec = {"url": url, "outdir": reports, "options": {"failByDrop": False},
        "cases": [c.strip() for c in cases.split(",") if c.strip()], "exclude-cases": [], "exclude-agent-cases": {}}
with open(path, "w") as f:
    json.dump(spec, f, indent=2)
PY
server_pid=""
stop_server() {
  if [ -n "$server_pid" ]; then
    kill "$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
    server_pid=""
  fi
}
trap stop_server EXIT
(cd "$out" && exec "$venv27/bin/python" "$here/wstest_loopback.py" -m fuzzingserver -s "$out/spec.json" -u 0) > "$out/server.log" 2>&1 &
server_pid=$!
for _ in $(seq 1 60); do
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then break; fi
  kill -0 "$server_pid" 2>/dev/null || die "the fuzzing server exited; see $out/server.log"
  sleep 0.5
done
(exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null || die "the fuzzing server did not start; see $out/server.log"

# -- the two clients, one after the other ---------------------------------------------------
left() { local n=$((deadline - SECONDS)); echo $((n > 1 ? n : 1)); }
t_start=$SECONDS
log "project $proj; results in $out"
# run_client NAME [args...]: every case, bounded by what is left of RUN_LIMIT
run_client() {
  local name=$1 rc=0 t0=$SECONDS
  shift
  timeout "$(left)" "$py3" "$here/autobahn_clients.py" "$name" --url "$url" --log "$out/$name.jsonl" \
    --timeout "${CASE_TIMEOUT:-30}" --slow-timeout "${SLOW_TIMEOUT:-20}" "$@" 2>&1 | tee -a "$out/$name.out" >&2 || rc=$?
  if [ "$rc" != 0 ]; then   # cut short: have the server write what it has
    log "$name ended with status $rc (RUN_LIMIT reached?); writing partial reports"
    timeout 130 "$py3" "$here/autobahn_clients.py" update-reports --url "$url" --agent "$name" >&2 || true
  fi
  log "$name took $((SECONDS - t0)) s"
}
run_client bare --slow-timeout 110   # the baseline: bounded by the server's own 100 s
run_client wsbridge --baseline-log "$out/bare.jsonl"
stop_server

# -- the summary -------------------------------------------------------------------------------
commit=$(git -C "$proj" rev-parse --short HEAD 2>/dev/null || echo unknown)   # read-only: no index refresh, no lock
if [ -n "$(git --no-optional-locks -C "$proj" status --porcelain 2>/dev/null)" ]; then commit="$commit-dirty"; fi
versions=$("$py3" -c 'import json, sys; m = json.load(open(sys.argv[1])); print(", ".join(f"{k} {v}" for k, v in m["versions"].items()))' \
  "$out/wsbridge.meta.json" 2>/dev/null || echo "versions unknown")
status=0
"$py3" "$here/autobahn_summary.py" "$out" --json "$out/summary.json" \
  --title "Autobahn|Testsuite 25.10.1 fuzzingserver, client side ($(date +%Y-%m-%d); checkout $commit; $versions; run $((SECONDS - t_start)) s)" \
  | tee "$out/summary.md" || status=$?
log "total $SECONDS s; summary $out/summary.md; Autobahn's report $out/reports/index.html; exit $status"
exit "$status"
