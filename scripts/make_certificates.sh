#!/usr/bin/env bash
# TLS certificates for a SuperLink, and optionally key pairs for SuperNode authentication (docs/deploy.md).
#
#   scripts/make_certificates.sh [DIR] [--san DNS:host.example.org] [--san IP:10.0.0.5] [--supernode-keys N]
#
# Writes into DIR (default: certificates/, which must stay out of git):
#   ca.crt, ca.key          a private certificate authority (ca.key signs; keep it off the SuperLink)
#   server.pem, server.key  the SuperLink's certificate, valid for 127.0.0.1 and localhost plus every --san
#   supernode_I, supernode_I.pub   (with --supernode-keys N, I = 0..N-1) ECDSA P-384 key pairs: the SuperNode
#                                  starts with the private key, the public key is registered at the SuperLink
# An existing DIR is refused (nothing is overwritten). Needs openssl (and ssh-keygen for --supernode-keys).
set -euo pipefail

dir=certificates
sans=("IP:127.0.0.1" "DNS:localhost")
keys=0
dir_set=0
while [ $# -gt 0 ]; do
  case "$1" in
    --san) sans+=("$2"); shift 2 ;;
    --supernode-keys) keys="$2"; shift 2 ;;
    -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
    -*) echo "unknown option: $1 (see --help)" >&2; exit 2 ;;
    *) if [ "$dir_set" = 1 ]; then echo "one DIR only (see --help)" >&2; exit 2; fi
       dir="$1"; dir_set=1; shift ;;
  esac
done
case "$keys" in ''|*[!0-9]*) echo "--supernode-keys needs a number, got '$keys'" >&2; exit 2 ;; esac

if [ -e "$dir" ] && [ -n "$(ls -A "$dir" 2>/dev/null)" ]; then
  echo "$dir exists and is not empty: remove it or name another folder" >&2
  exit 1
fi
mkdir -p "$dir"
umask 077

san_list=$(IFS=,; echo "${sans[*]}")
days=365

openssl req -x509 -newkey rsa:3072 -sha256 -nodes -days "$days" \
  -keyout "$dir/ca.key" -out "$dir/ca.crt" -subj "/CN=fedkt local CA" \
  -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null

openssl req -newkey rsa:3072 -sha256 -nodes -keyout "$dir/server.key" -out "$dir/server.csr" \
  -subj "/CN=fedkt SuperLink" 2>/dev/null
cat > "$dir/server.ext" <<EOF
basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectAltName=$san_list
EOF
openssl x509 -req -sha256 -days "$days" -in "$dir/server.csr" -CA "$dir/ca.crt" -CAkey "$dir/ca.key" \
  -CAcreateserial -out "$dir/server.pem" -extfile "$dir/server.ext" 2>/dev/null
rm -f "$dir/server.csr" "$dir/server.ext" "$dir/ca.srl"
chmod 644 "$dir/ca.crt" "$dir/server.pem"

i=0
while [ "$i" -lt "$keys" ]; do
  ssh-keygen -q -t ecdsa -b 384 -N "" -C "fedkt supernode $i" -f "$dir/supernode_$i"
  i=$((i + 1))
done

echo "wrote into $dir: ca.crt ca.key server.pem server.key$([ "$keys" -gt 0 ] && echo " supernode_0..$((keys - 1))(.pub)")"
echo "server certificate valid for: $san_list"
