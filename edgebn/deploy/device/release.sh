# The device side of `edgebn deploy`: releases, the live link and their log, under one lock.
# POSIX sh with flock (util-linux) and GNU mv; sent over ssh as `sh -c SCRIPT release.sh ...`.
#
#   release.sh copy DEST RELEASE TRUST VERIFIER PYTHON WAIT_S   < tar stream of RELEASE/
#   release.sh rollback DEST WAIT_S
#   release.sh predict DEST TRUST VERIFIER PYTHON [predict.py args]
#   release.sh trust DEST TRUST VERIFIER ALLOWED_SIGNERS_LINE     < verify.py
#
# Exit codes: 3 nothing to do (no release / no earlier one), 4 lock not had in WAIT_S,
# 5 the stream could not be received (no space left, cut short), 6 the verifier refused.
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

go_live() {  # point current at releases/$1 (one rename) and append $1 to the log, uninterrupted
    trap '' HUP INT TERM PIPE
    ln -sfn "releases/$1" "$D/.current.$$"
    mv -T "$D/.current.$$" "$D/current"
}

copy() {
    R=$1 T=$(home "$2") V=$(home "$3") PY=$4
    lock "$5"
    S="$D/releases/.$R.incoming.$$"
    trap 'rm -rf "$S"' EXIT
    trap 'exit 129' HUP; trap 'exit 130' INT; trap 'exit 143' TERM
    mkdir "$S"
    if ! E=$(tar -xf - -C "$S" 2>&1); then
        case $E in
            *"No space left"*)
                free=$(df -Pk "$D" | awk 'NR == 2 {print $4}')
                echo "no space left on the device in $D (${free} KiB free): nothing was changed" >&2 ;;
            *) echo "receiving the bundle failed: $(printf '%s\n' "$E" | tail -n 1)" >&2 ;;
        esac
        exit 5
    fi
    if [ -e "$T" ] || [ -L "$T" ]; then  # a trusting device: its own verifier decides
        [ -f "$V" ] || { echo "this device trusts the keys in $T but has no verifier at $V: deploy once with --trust KEY.pub" >&2; exit 6; }
        EDGEBN_TRUST=$T "$PY" -I "$V" check "$S/$R" >/dev/null || exit 6
    fi
    P=$(readlink "$D/current" 2>/dev/null || true)
    if [ "$P" != "releases/$R" ]; then  # the live release is never replaced or removed
        if [ -e "$D/releases/$R" ]; then mv "$D/releases/$R" "$S/replaced"; fi
        mv "$S/$R" "$D/releases/$R"
    fi
    go_live "$R"
    if [ "$(tail -n 1 "$D/releases.log" 2>/dev/null || true)" != "$R" ]; then
        echo "$R" >> "$D/releases.log"
    fi
    echo "previous=${P#releases/}"
}

rollback() {
    lock "$1"
    P=$(readlink "$D/current") || { echo "no current release in $D" >&2; exit 3; }
    sed '$d' "$D/releases.log" > "$D/releases.log.tmp"
    R=$(tail -n 1 "$D/releases.log.tmp")
    if [ -z "$R" ] || [ ! -d "$D/releases/$R" ]; then
        rm -f "$D/releases.log.tmp"
        echo "no earlier release to roll back to in $D/releases.log" >&2
        exit 3
    fi
    go_live "$R"
    mv "$D/releases.log.tmp" "$D/releases.log"
    echo "previous=${P#releases/} current=$R"
}

predict() {  # predict.py in DEST/current: through the device's verifier when it trusts keys
    T=$(home "$1") V=$(home "$2") PY=$3
    shift 3
    export EDGEBN_TRUST="$T"
    if [ -e "$T" ] || [ -L "$T" ]; then
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
    copy) copy "$@" ;;
    rollback) rollback "$@" ;;
    predict) predict "$@" ;;
    trust) trust "$@" ;;
    *) echo "release.sh: unknown command $command" >&2; exit 2 ;;
esac
