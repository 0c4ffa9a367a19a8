#!/usr/bin/env bash
# The one-time step before `docker compose up`: the Redis users of docker-compose.yml.
#
#   scripts/compose-secrets.sh [DIR]     # DIR: secrets (beside docker-compose.yml) by default
#
# Runs `blogctl acl --passwords DIR > DIR/users.acl` for the namespace compose uses (`blog`): a
# random password per user in DIR/<user>.password (one already there is kept, so running it
# again only rewrites users.acl), and the ACL file Redis loads (the hashes of the passwords, the
# `default` user off). Compose mounts each file into its container as it is on the host, owner
# and mode included, and the containers run as users of their own: the files are made readable
# by all, and DIR by its owner only. BLOGCTL_BIN: use this binary instead of building one.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
dir=${1:-$repo/secrets}

if [[ -n ${BLOGCTL_BIN:-} ]]; then
    bin=$BLOGCTL_BIN
else
    if ! command -v cargo >/dev/null 2>&1; then
        echo "error: cargo is not installed; install a Rust toolchain (https://rustup.rs) or set BLOGCTL_BIN" >&2
        exit 1
    fi
    echo "compose-secrets: building blogctl (cargo build --release)" >&2
    (cd "$repo" && cargo build --release)
    target_dir=${CARGO_TARGET_DIR:-target}
    [[ $target_dir == /* ]] || target_dir=$repo/$target_dir
    bin=$target_dir/release/blogctl
fi

mkdir -p "$dir"
chmod 700 "$dir"
# Written aside, then moved: a failed run leaves the previous ACL file whole.
"$bin" --namespace blog acl --passwords "$dir" >"$dir/users.acl.new"
mv "$dir/users.acl.new" "$dir/users.acl"
chmod 644 "$dir"/*.password "$dir/users.acl"
echo "compose-secrets: $dir holds users.acl and a password per user; next: docker compose up -d --build" >&2
