#!/usr/bin/env bash
# The panel's URL import against `curl -o` then `sha256sum` (what an admin
# does by hand), from the same local HTTPS server (Python's http.server over
# OpenSSL), alternating, 3 runs each, on a 1 GiB file of random bytes. Both
# are timed until the file is on disk and its SHA-256 checked; the panel
# checks the digest given with the request while it downloads.
#
#   webadmin/bench/download.sh            # builds the panel (release) first
#   W=path/to/kvmos-webadmin webadmin/bench/download.sh
#
# Needs openssl, python3, curl, bc. Work files go to $BENCH_DIR
# (default /tmp/kvmos-download-bench, about 3 GiB at most).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
dir=${BENCH_DIR:-/tmp/kvmos-download-bench}
if [ -z "${W:-}" ]; then
    cargo build --release -q -p kvmos-webadmin --manifest-path "$here/../../Cargo.toml"
    W=$(cd "$here/../.." && cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')/release/kvmos-webadmin
fi
rm -rf "$dir" && mkdir -p "$dir/files" "$dir/guests" && cd "$dir"

# A test CA, a server certificate for 127.0.0.1, and the file.
openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.pem -days 2 -subj "/CN=bench CA" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign" 2>/dev/null
openssl req -newkey rsa:2048 -nodes -keyout srv.key -out srv.csr -subj "/CN=127.0.0.1" 2>/dev/null
printf "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n" > ext.cnf
openssl x509 -req -in srv.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out srv.pem -days 2 -extfile ext.cnf 2>/dev/null
head -c 1073741824 /dev/urandom > files/big.img
sum=$(sha256sum files/big.img | cut -d' ' -f1)

python3 "$here/https_server.py" 4443 files srv.pem srv.key 2>/dev/null &
srv=$!
"$W" --data-dir "$dir/data" --listen 127.0.0.1:8443 --redirect-from none --status-file "$dir/status.json" \
    --setup-code-file "$dir/setup-code" --run-dir "$dir/run" --guests-dir "$dir/guests" --vmm /bin/false \
    --bridge none 2>panel.log &
panel=$!
trap 'kill $srv $panel 2>/dev/null' EXIT
until [ -s setup-code ] && curl -sk https://127.0.0.1:8443/api/v1/health >/dev/null; do sleep 0.2; done

# Set the panel up, and trust the test CA for downloads.
jar=$dir/cookies
csrf=$(curl -sk -c "$jar" -H 'Content-Type: application/json' -X POST https://127.0.0.1:8443/api/v1/setup \
    -d "{\"code\": \"$(cat setup-code)\", \"password\": \"bench password 123\"}" |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["csrf"])')
api() { curl -sk -b "$jar" -H "X-CSRF-Token: $csrf" -H 'Content-Type: application/json' "$@"; }
api -X PUT https://127.0.0.1:8443/api/v1/settings/trusted-ca \
    -d "$(python3 -c 'import json; print(json.dumps({"pem": open("ca.pem").read()}))')" >/dev/null

for i in 1 2 3; do
    start=$(date +%s.%N)
    id=$(api -X POST https://127.0.0.1:8443/api/v1/images/import \
        -d "{\"name\": \"big$i\", \"url\": \"https://127.0.0.1:4443/big.img\", \"kind\": \"disk\", \"checksum\": \"$sum\"}" |
        python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
    while :; do
        st=$(api "https://127.0.0.1:8443/api/v1/tasks/$id" | python3 -c 'import json,sys; print(json.load(sys.stdin)["state"])')
        [ "$st" != running ] && break
        sleep 0.05
    done
    end=$(date +%s.%N)
    [ "$st" = done ] || { echo "the panel's import ended $st"; exit 1; }
    echo "panel import #$i: $(echo "$end - $start" | bc) s"
    api -X DELETE "https://127.0.0.1:8443/api/v1/images/big$i" >/dev/null

    start=$(date +%s.%N)
    curl -s --cacert ca.pem https://127.0.0.1:4443/big.img -o curl.out
    got=$(sha256sum curl.out | cut -d' ' -f1)
    sync -f curl.out
    end=$(date +%s.%N)
    [ "$got" = "$sum" ] || { echo "curl: wrong checksum"; exit 1; }
    echo "curl + sha256sum #$i: $(echo "$end - $start" | bc) s"
    rm -f curl.out
done
