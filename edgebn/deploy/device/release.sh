# The device side of `edgebn deploy`: releases, the live link and their log, under one lock.
# POSIX sh with flock (util-linux) and GNU mv; sent over ssh as `sh -c SCRIPT release.sh ...`,
# by edgebn's own ssh and by the edgebn.fleet Ansible collection alike.
#
#   release.sh status DEST RELEASE TRUST VERIFIER PYTHON                        (read-only)
#   release.sh deploy DEST RELEASE TRUST VERIFIER PYTHON WAIT_S SELFTEST HEALTH_S ROLLBACK HEALTH_PY
#                                                                 < tar stream of RELEASE/
#   release.sh rollback DEST WAIT_S [EXPECT]
#   release.sh predict DEST TRUST VERIFIER PYTHON [predict.py args]
#   release.sh trust DEST TRUST VERIFIER ALLOWED_SIGNERS_LINE     < verify.py
#
# deploy, in this order, all under DEST's lock:
#   1. stage: the tar stream into releases/.RELEASE.incoming.PID (a copy cut short changes nothing);
#   2. verify: on a device that trusts keys, its own verifier checks the staged copy;
#   3. self-test the staged copy with the device's own Python and runtime (SELFTEST=1);
#   4. switch current to it (one rename) and append it to releases.log;
#   5. health check: DEST/service.json names a server whose GET /health must report RELEASE
#      with its self-test passed within HEALTH_S seconds (HEALTH_PY, a standard-library
#      script sent with this one, polls it); without a service, the live release's self-test;
#   6. a failed health check rolls back to the previous release (ROLLBACK=1), only if current
#      is still the release this deploy switched to (rollback --expect RELEASE).
# Its stdout is key=value lines (previous=, selftest=<one-line JSON>, switched=, health=,
# rolled_back=); the reason for a failure is the last line of stderr.
#
# Exit codes: 3 nothing to do (no release / no earlier one / current is not EXPECT), 4 lock not
# had in WAIT_S, 5 the stream could not be received (no space left, cut short), 6 the verifier
# refused, 7 the staged release's self-test failed (nothing switched), 8 health check failed and
# rolled back, 9 health check failed and kept (ROLLBACK=0), 10 out of time before the switch.
set -eu

home() {  # a leading ~/ means the login's home
    case $1 in
        "~") printf '%s\n' "$HOME" ;;
        "~/"*) printf '%s/%s\n' "$HOME" "${1#\~/}" ;;
        *) printf '%s\n' "$1" ;;
    esac
}

lock() {  # DEST's lock, held until this shell exits; then the leftovers of a deploy that died
    command -v flock >/dev/null || { echo "flock not found on the device (apt install util-linux)" >&2; exit 3; }
    mkdir -p "$D/releases"
    exec 9>>"$D/.lock"
    flock -w "$1" 9 || { echo "another deploy to $D still holds $D/.lock after $1 s" >&2; exit 4; }
    for f in "$D"/releases/.*.incoming.* "$D"/.current.* "$D/releases.log.tmp"; do
        if [ -e "$f" ] || [ -L "$f" ]; then rm -rf "$f"; fi
    done
}

go_live() {  # point current at releases/$1 (one rename); from here on nothing interrupts this shell
    trap '' HUP INT TERM PIPE
    ln -sfn "releases/$1" "$D/.current.$$"
    mv -T "$D/.current.$$" "$D/current"
}

say() {  # a result line; once live, a controller that went away does not stop the device
    printf '%s\n' "$1" 2>/dev/null || true
}

trusting() { [ -e "$T" ] || [ -L "$T" ]; }

selftest() {  # predict.py --selftest --json in release folder $1: through the verifier if trusting
    rc=0
    if trusting; then
        OUT=$(EDGEBN_TRUST=$T "$PY" -I "$V" run "$1" --selftest --json 2>"$S/stderr") || rc=$?
    else
        OUT=$(cd "$1" && EDGEBN_TRUST=$T "$PY" -I predict.py --selftest --json 2>"$S/stderr") || rc=$?
    fi
    ERR=$(tail -n 1 "$S/stderr")
    return "$rc"
}

undo() {  # with the lock held: current back to the line before the last of releases.log, if current is $1
    WAS=$(readlink "$D/current" 2>/dev/null || true)
    if [ -n "$1" ] && [ "$WAS" != "releases/$1" ]; then
        echo "current is ${WAS#releases/}, not $1: another deploy switched it; not rolling back" >&2
        return 3
    fi
    [ -n "$WAS" ] || { echo "no current release in $D" >&2; return 3; }
    sed '$d' "$D/releases.log" > "$D/releases.log.tmp"
    TO=$(tail -n 1 "$D/releases.log.tmp")
    if [ -z "$TO" ] || [ ! -d "$D/releases/$TO" ]; then
        rm -f "$D/releases.log.tmp"
        echo "no earlier release to roll back to in $D/releases.log" >&2
        return 3
    fi
    go_live "$TO"
    mv "$D/releases.log.tmp" "$D/releases.log"
    echo "previous=${WAS#releases/} current=$TO"
}

digest() {  # a file's sha256, or nothing
    if [ -f "$1" ] && command -v sha256sum >/dev/null; then sha256sum < "$1" | cut -d ' ' -f 1; fi
}

status() {  # what the device has, read-only: no lock taken, nothing created
    R=$1 T=$(home "$2") V=$(home "$3") PY=$4
    P=$(readlink "$D/current" 2>/dev/null || true)
    echo "current=${P#releases/}"
    if [ -d "$D/releases/$R" ]; then echo "present=yes"; else echo "present=no"; fi
    if trusting; then echo "trusting=yes"; else echo "trusting=no"; fi
    echo "trust_sha256=$(digest "$T")"
    echo "verifier_sha256=$(digest "$V")"
    if [ -f "$D/service.json" ]; then echo "service=yes"; else echo "service=no"; fi
    os=$(sed -n 's/^PRETTY_NAME=//p' /etc/os-release 2>/dev/null | tr -d '"' | head -n 1)
    echo "os=$os"
    t=""
    if [ -r /sys/class/thermal/thermal_zone0/temp ]; then t=$(head -c 16 /sys/class/thermal/thermal_zone0/temp); fi
    echo "temp_milli_c=$t"
    v=$("$PY" -I -S -c 'import sys; print("%d.%d.%d" % sys.version_info[:3])' 2>/dev/null || true)
    echo "python=$v"
}

deploy() {
    R=$1 T=$(home "$2") V=$(home "$3") PY=$4 WAIT=$5 SELFTEST=$6 HEALTH_S=$7 ROLLBACK=$8 HEALTH_PY=$9
    END=$(( $(date +%s) + WAIT ))
    lock "$WAIT"
    S="$D/releases/.$R.incoming.$$"
    trap 'rm -rf "$S"' EXIT
    trap 'exit 129' HUP; trap 'exit 130' INT; trap 'exit 143' TERM
    mkdir "$S"
    # 1. stage
    if ! E=$(tar -xf - -C "$S" 2>&1); then
        case $E in
            *"No space left"*)
                free=$(df -Pk "$D" | awk 'NR == 2 {print $4}')
                echo "no space left on the device in $D (${free} KiB free): nothing was changed" >&2 ;;
            *) echo "receiving the bundle failed: $(printf '%s\n' "$E" | tail -n 1)" >&2 ;;
        esac
        exit 5
    fi
    # 2. verify (a trusting device: its own verifier decides)
    if trusting; then
        [ -f "$V" ] || { echo "this device trusts the keys in $T but has no verifier at $V: deploy once with --trust KEY.pub" >&2; exit 6; }
        EDGEBN_TRUST=$T "$PY" -I "$V" check "$S/$R" >/dev/null || exit 6
    fi
    # 3. self-test the staged release
    if [ "$SELFTEST" = 1 ]; then
        rc=0; selftest "$S/$R" || rc=$?
        say "selftest=$(printf '%s' "$OUT" | tr -d '\n')"
        say "selftest_exit=$rc"
        if [ "$rc" != 0 ]; then echo "$ERR" >&2; exit 7; fi
    fi
    # 4. switch: only while the deploy still has time, and while its controller listens
    [ "$(date +%s)" -lt "$END" ] || { echo "out of time before the switch (${WAIT} s): nothing was switched" >&2; exit 10; }
    P=$(readlink "$D/current" 2>/dev/null || true)
    printf 'previous=%s\n' "${P#releases/}"
    if [ "$P" != "releases/$R" ]; then  # the live release is never replaced or removed
        if [ -e "$D/releases/$R" ]; then mv "$D/releases/$R" "$S/replaced"; fi
        mv "$S/$R" "$D/releases/$R"
    fi
    go_live "$R"
    if [ "$(tail -n 1 "$D/releases.log" 2>/dev/null || true)" != "$R" ]; then
        echo "$R" >> "$D/releases.log"
    fi
    say "switched=$R"
    # 5. health check
    rc=0 OK=ok
    if [ -f "$D/service.json" ]; then
        ERR=$("$PY" -I -c "$HEALTH_PY" "$D" "$R" "$HEALTH_S" 2>&1) || rc=$?
        ERR=$(printf '%s\n' "$ERR" | tail -n 1)
    elif [ "$SELFTEST" = 1 ]; then
        selftest "$D/current" || rc=$?
        [ "$rc" = 0 ] || ERR="the live release's self-test (exit $rc): $ERR"
    else
        OK="unchecked (no service, no self-test)"
    fi
    if [ "$rc" = 0 ]; then say "health=$OK"; exit 0; fi
    say "health=$ERR"
    # 6. roll back what this deploy switched
    if [ "$ROLLBACK" != 1 ]; then echo "health check failed: $ERR" >&2; exit 9; fi
    if [ -z "${P#releases/}" ]; then  # nothing was live before: nothing is live after
        rm -f "$D/current"
        sed '$d' "$D/releases.log" > "$D/releases.log.tmp"
        mv "$D/releases.log.tmp" "$D/releases.log"
        say "rolled_back="
    else
        undo "$R" >/dev/null || { echo "health check failed: $ERR; and the rollback did not run" >&2; exit 9; }
        say "rolled_back=${P#releases/}"
    fi
    echo "health check failed: $ERR" >&2
    exit 8
}

rollback() {
    lock "$1"
    undo "${2:-}" || exit 3
}

predict() {  # predict.py in DEST/current: through the device's verifier when it trusts keys
    T=$(home "$1") V=$(home "$2") PY=$3
    shift 3
    export EDGEBN_TRUST="$T"
    if trusting; then
        [ -f "$V" ] || { echo "Error: this device trusts the keys in $T but has no verifier at $V: deploy once with --trust KEY.pub" >&2; exit 2; }
        exec "$PY" -I "$V" run "$D/current" "$@"
    fi
    cd "$D/current"
    exec "$PY" -I predict.py "$@"
}

trust() {  # the trust file and the verifier beside it, each replaced atomically
    T=$(home "$1") V=$(home "$2")
    mkdir -p "$(dirname "$T")" "$(dirname "$V")"
    cat > "$V.tmp"
    mv "$V.tmp" "$V"
    printf '%s\n' "$3" > "$T.tmp"
    mv "$T.tmp" "$T"
}

command=$1 D=$(home "$2")
shift 2
case $command in
    status) status "$@" ;;
    deploy) deploy "$@" ;;
    rollback) rollback "$@" ;;
    predict) predict "$@" ;;
    trust) trust "$@" ;;
    *) echo "release.sh: unknown command $command" >&2; exit 2 ;;
esac
