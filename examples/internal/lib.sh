# Shared by the scenario scripts in examples/<scenario>/run; sourced, not run.
#
# A scenario script sets SCENARIO, sources this file, calls setup, runs the
# real binaries with real signals and files, records every check it makes
# (expect, check), and ends with finish, which runs bin/verify on the target,
# writes .faults/<scenario>/result.json and prints the verdict. The exit
# status is 0 only when every check passed.
#
# Every process a scenario starts inherits MEMVISOR_FAULTS_MARK, a value
# unique to the run: the scripts find the job's runners in /proc by it, and
# the cleanup kills only those processes and the ones the script started.

set -euo pipefail

: "${SCENARIO:?set SCENARIO before sourcing lib.sh}"
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"
BIN=${MEMVISOR_BIN:-$ROOT/bin}
EX=examples/$SCENARIO
W=.faults/$SCENARIO
# FAULTS_JOB runs the scenario on another job file (to see a check fail, say).
JOB=${FAULTS_JOB:-$EX/job.yaml}
CHECKS=$W/checks.jsonl
FK=${FAULTKIT:-$ROOT/.faults/bin/faultkit}
export MEMVISOR_FAULTS_MARK="$SCENARIO.$$.$RANDOM$RANDOM"

STARTED=$(date +%s.%N)
BG_PIDS=()
SUMMARIES=()
FINISHED=0
VERIFY_FILE=""
VERIFY_FILES=()
SKIP_REASON=""
# A scenario may set CLEANUP_HOOK to a function run on exit (unmount...).
CLEANUP_HOOK=${CLEANUP_HOOK:-}

say() { printf '== %s\n' "$*"; }

setup() {
	if [ ! -x "$BIN/supervisor" ] || [ ! -x "$BIN/runner" ] || [ ! -x "$BIN/verify" ] || [ ! -x "$BIN/podio-emulator" ]; then
		say "building the binaries (make build)"
		make -s build
	fi
	if [ -z "${FAULTKIT:-}" ]; then
		mkdir -p .faults/bin
		go build -o "$FK" ./examples/internal/faultkit
	fi
	rm -rf "$W"
	mkdir -p "$W"
	say "scenario $SCENARIO (scratch directory $W)"
}

# cleanup runs on every exit: it stops what the script started, then the
# runners of this run that are still alive (an orphan left by a killed
# supervisor, say), by pid.
cleanup() {
	local rc=$?
	set +e
	{
		for pid in "${BG_PIDS[@]}"; do
			kill -KILL "$pid"
		done
		if [ -x "$FK" ] && [ -x "$BIN/runner" ]; then
			for pid in $("$FK" runners -exe "$BIN/runner" -mark "$MEMVISOR_FAULTS_MARK"); do
				kill -KILL "$pid"
			done
		fi
		wait
	} 2>/dev/null
	if [ -n "$CLEANUP_HOOK" ]; then
		"$CLEANUP_HOOK"
	fi
	if [ "$FINISHED" = 0 ] && [ -d "$W" ]; then
		# The script stopped before its verdict: say so in the result.
		"$FK" check -checks "$CHECKS" -ok=false "the scenario script ran to its end" "it stopped with status $rc; see the output above" >/dev/null 2>&1
		"$FK" result -scenario "$SCENARIO" -dir "$W" -duration "$(elapsed)" >/dev/null 2>&1
		exit 1
	fi
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

elapsed() { awk -v a="$STARTED" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }'; }

# expect JSONFILE 'PATH OP VALUE' DESCRIPTION: check a field of a JSON file.
expect() { "$FK" expect -checks "$CHECKS" -desc "$3" "$1" "$2"; }

# check DESCRIPTION DETAIL COMMAND...: the check passes if COMMAND succeeds.
check() {
	local desc=$1 detail=$2
	shift 2
	if "$@"; then
		"$FK" check -checks "$CHECKS" -ok=true "$desc" "$detail"
	else
		"$FK" check -checks "$CHECKS" -ok=false "$desc" "$detail"
	fi
}

# abort REASON: a precondition failed; record it and end with the verdict.
abort() {
	"$FK" check -checks "$CHECKS" -ok=false "$1" "${2:-}"
	finish
}

# log_has FILE MESSAGE: the JSON log has a line with this message.
log_has() { grep -qF "\"message\":\"$2\"" "$1"; }
# log_count FILE MESSAGE: how many lines of the JSON log have this message.
log_count() { grep -cF "\"message\":\"$2\"" "$1" || true; }

# events FILE: print the lines of a JSON log an operator looks for.
events() { "$FK" events "$1" | sed 's/^/   /'; }

# wait_until SECONDS COMMAND...: poll COMMAND every 0.1s; status 1 on timeout.
wait_until() {
	local deadline
	deadline=$(($(date +%s) + $1))
	shift
	until "$@"; do
		if [ "$(date +%s)" -ge "$deadline" ]; then
			return 1
		fi
		sleep 0.1
	done
}

# runner_pids: the live runners of this run.
runner_pids() { "$FK" runners -exe "$BIN/runner" -mark "$MEMVISOR_FAULTS_MARK"; }

# sup_start NAME [FLAGS...]: start `supervisor run JOB` in the background,
# with a JSON log in $W/NAME.log and a summary in $W/NAME.summary.json. Sets
# SUP_PID.
sup_start() {
	local name=$1
	shift
	"$BIN/supervisor" run "$JOB" --log-format json --summary "$W/$name.summary.json" "$@" \
		>"$W/$name.out" 2>"$W/$name.log" &
	SUP_PID=$!
	BG_PIDS+=("$SUP_PID")
	SUMMARIES+=("$W/$name.summary.json")
}

# proc_wait PID SECONDS: wait for a background process; sets RC (124 when
# it was still running after SECONDS and had to be killed).
proc_wait() {
	local pid=$1
	local deadline=$(($(date +%s) + $2))
	while kill -0 "$pid" 2>/dev/null; do
		if [ "$(date +%s)" -ge "$deadline" ]; then
			kill -KILL "$pid" 2>/dev/null || true
			wait "$pid" 2>/dev/null || true
			RC=124
			return 0
		fi
		sleep 0.1
	done
	RC=0
	wait "$pid" || RC=$?
}

# sup_run NAME SECONDS [FLAGS...]: run the supervisor in the foreground
# (bounded); sets RC and prints its summary line.
sup_run() {
	local name=$1 secs=$2
	shift 2
	sup_start "$name" "$@"
	proc_wait "$SUP_PID" "$secs"
	sed 's/^/   /' "$W/$name.out"
	if [ "$RC" = 124 ]; then
		say "supervisor run $name did not end within ${secs}s; killed"
	fi
}

# runner_run NAME SECONDS [FLAGS...]: run `runner run JOB` unsupervised
# (bounded); the log goes to $W/NAME.log. Sets RC.
runner_run() {
	local name=$1 secs=$2
	shift 2
	"$BIN/runner" run "$JOB" "$@" --progress-interval 1h >"$W/$name.out" 2>"$W/$name.log" &
	local pid=$!
	BG_PIDS+=("$pid")
	proc_wait "$pid" "$secs"
}

# verify_target [NAME]: run bin/verify on $JOB; its report (VERIFY_FILE)
# goes into the verdict. A scenario with several jobs verifies each.
verify_target() {
	VERIFY_FILE=$W/verify${1:+-$1}.json
	VERIFY_FILES+=("$VERIFY_FILE")
	local rc=0
	"$BIN/verify" --json "$JOB" >"$VERIFY_FILE" 2>"$W/verify.err" || rc=$?
	"$BIN/verify" "$JOB" 2>&1 | sed 's/^/   /' || true
	if [ "$rc" -gt 1 ]; then
		say "verify could not run: $(cat "$W/verify.err")"
	fi
}

# finish: the verdict. Exits 0 only if every check passed.
finish() {
	local args=(-scenario "$SCENARIO" -dir "$W" -duration "$(elapsed)")
	for s in "${SUMMARIES[@]}"; do
		args+=(-summary "$s")
	done
	for v in "${VERIFY_FILES[@]}"; do
		args+=(-verify "$v")
	done
	if [ -n "$SKIP_REASON" ]; then
		args+=(-skip "$SKIP_REASON")
	fi
	FINISHED=1
	local rc=0
	"$FK" result "${args[@]}" || rc=$?
	exit "$rc"
}
