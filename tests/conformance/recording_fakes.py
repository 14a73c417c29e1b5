"""Small in-memory object stores that RECORD the credential each request carries, for the client
matrix (test_clients_*.py): an S3 (SigV4, verified against the secret the fake STS issued), a GCS
(JSON API as Go's google-api-go uses it, and the XML API object_store uses) and an Azure Blob
endpoint (bearer tokens). They keep objects so real programs can upload, list and download.

Each store is `with FakeS3(...) as s3:`; `s3.url` is its base URL and `s3.records` the list of
requests seen: {"method", "path", "query", "access_key", "session_token", "signature", "bearer"}.
"""

from __future__ import annotations

import base64
import datetime as dt
import email.parser
import email.policy
import hashlib
import hmac
import json
import re
import ssl
import threading
import urllib.parse
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from xml.sax.saxutils import escape

S3_NS = "http://s3.amazonaws.com/doc/2006-03-01/"


class LoopbackCert:
    """A self-signed certificate for 127.0.0.1 (IP SAN), for clients that speak only https (gsutil's
    JSON API); `cert_path` is also the CA file to give them."""

    def __init__(self, directory, dns_names: tuple[str, ...] = ()):
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID
        import ipaddress

        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
        now = dt.datetime.now(dt.timezone.utc)
        cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(hours=1))
                .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                                                            *map(x509.DNSName, dns_names)]), False)
                .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
                .sign(key, hashes.SHA256()))
        self.cert_path = str(directory / "loopback-cert.pem")
        self.key_path = str(directory / "loopback-key.pem")
        with open(self.cert_path, "wb") as f:
            f.write(cert.public_bytes(serialization.Encoding.PEM))
        with open(self.key_path, "wb") as f:
            f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption()))


def _uri_encode(value: str) -> str:
    return urllib.parse.quote(value, safe="-_.~")


def _now_iso() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.000Z")


class _Object:
    def __init__(self, data: bytes, content_type: str = "application/octet-stream"):
        self.data = data
        self.content_type = content_type
        self.md5 = hashlib.md5(data).digest()
        self.modified = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
        self.generation = str(int(self.modified.timestamp() * 1_000_000))

    @property
    def etag(self) -> str:
        return '"' + self.md5.hex() + '"'


class _Store(ThreadingHTTPServer):
    """The HTTP server, the buckets and the request log shared by a fake's handlers."""

    daemon_threads = True

    def __init__(self, handler, fake, port: int = 0):
        super().__init__(("127.0.0.1", port), handler)
        self.fake = fake


class _Fake:
    handler: type

    def __init__(self, buckets=("bucket",), tls: "LoopbackCert | None" = None, port: int = 0):
        self.buckets: dict[str, dict[str, _Object]] = {b: {} for b in buckets}
        self.records: list[dict] = []
        self.lock = threading.Lock()
        self.server = _Store(self.handler, self, port)
        self.scheme = "http"
        if tls is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(tls.cert_path, tls.key_path)
            self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
            self.scheme = "https"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def addr(self) -> str:
        host, port = self.server.server_address[:2]
        return f"{host}:{port}"

    @property
    def port(self) -> int:
        return self.server.server_address[1]

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.addr}"

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()

    def record(self, entry: dict) -> None:
        with self.lock:
            self.records.append(entry)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Store

    def log_message(self, *args):  # quiet
        pass

    # --- helpers
    @property
    def fake(self):
        return self.server.fake

    def _split(self):
        raw_path, _, raw_query = self.path.partition("?")
        return raw_path, raw_query, urllib.parse.parse_qs(raw_query, keep_blank_values=True)

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            out = b""
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return out
                out += self.rfile.read(size)
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _send(self, status: int, body: bytes = b"", content_type: str = "application/xml",
              headers: dict | None = None, head: bool = False):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if not head and self.command != "HEAD":
            self.wfile.write(body)

    def _bearer(self) -> str | None:
        auth = self.headers.get("Authorization", "")
        return auth[len("Bearer "):] if auth.startswith("Bearer ") else None

    def _object_headers(self, obj: _Object) -> dict:
        return {"ETag": obj.etag, "Last-Modified": formatdate(obj.modified.timestamp(), usegmt=True)}

    def _list_xml(self, bucket: str, params: dict) -> bytes:
        """S3 ListObjects (v1 and v2); also GCS's XML API (object_store uses it for GCS)."""
        get = lambda k, d="": params.get(k, [d])[0]  # noqa: E731
        prefix, delimiter = get("prefix"), get("delimiter")
        url_encode = get("encoding-type") == "url"
        enc = (lambda s: urllib.parse.quote(s, safe="/")) if url_encode else (lambda s: s)
        contents, prefixes = [], set()
        for key in sorted(self.fake.buckets[bucket]):
            if not key.startswith(prefix):
                continue
            rest = key[len(prefix):]
            if delimiter and delimiter in rest:
                prefixes.add(prefix + rest.split(delimiter, 1)[0] + delimiter)
                continue
            obj = self.fake.buckets[bucket][key]
            contents.append(
                f"<Contents><Key>{escape(enc(key))}</Key><LastModified>{obj.modified.strftime('%Y-%m-%dT%H:%M:%S.000Z')}"
                f"</LastModified><ETag>{escape(obj.etag)}</ETag><Size>{len(obj.data)}</Size>"
                f"<StorageClass>STANDARD</StorageClass></Contents>")
        common = "".join(f"<CommonPrefixes><Prefix>{escape(enc(p))}</Prefix></CommonPrefixes>"
                         for p in sorted(prefixes))
        v2 = get("list-type") == "2"
        extra = f"<KeyCount>{len(contents) + len(prefixes)}</KeyCount>" if v2 else "<Marker></Marker>"
        return (f'<?xml version="1.0" encoding="UTF-8"?><ListBucketResult xmlns="{S3_NS}">'
                f"<Name>{bucket}</Name><Prefix>{escape(enc(prefix))}</Prefix>{extra}<MaxKeys>1000</MaxKeys>"
                + (f"<Delimiter>{escape(delimiter)}</Delimiter>" if delimiter else "")
                + ("<EncodingType>url</EncodingType>" if url_encode else "")
                + "<IsTruncated>false</IsTruncated>" + "".join(contents) + common
                + "</ListBucketResult>").encode()

    def _xml_error(self, status: int, code: str, message: str):
        body = f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code><Message>{escape(message)}</Message></Error>'
        self._send(status, body.encode())

    def _bucket_object_api(self, bucket: str, key: str, params: dict, body: bytes):
        """The S3-style object API over path-style URLs (S3, and the GCS XML API)."""
        objects = self.fake.buckets.get(bucket)
        if objects is None:
            if self.command == "PUT" and not key:
                self.fake.buckets[bucket] = {}
                return self._send(200)
            return self._xml_error(404, "NoSuchBucket", bucket)
        if not key:
            if self.command in ("GET",) and "location" in params:
                return self._send(200, f'<?xml version="1.0" encoding="UTF-8"?><LocationConstraint xmlns="{S3_NS}"/>'.encode())
            if self.command == "GET":
                return self._send(200, self._list_xml(bucket, params))
            if self.command in ("HEAD", "PUT"):
                return self._send(200)
            if self.command == "POST" and "delete" in params:
                keys = re.findall(r"<Key>(.*?)</Key>", body.decode())
                for k in keys:
                    objects.pop(urllib.parse.unquote(k), None)
                deleted = "".join(f"<Deleted><Key>{k}</Key></Deleted>" for k in keys)
                return self._send(200, f'<?xml version="1.0" encoding="UTF-8"?><DeleteResult xmlns="{S3_NS}">{deleted}</DeleteResult>'.encode())
            return self._xml_error(405, "MethodNotAllowed", self.command)
        if self.command == "PUT":
            source = self.headers.get("x-amz-copy-source")
            if source:
                sb, _, sk = urllib.parse.unquote(source).lstrip("/").partition("/")
                objects[key] = _Object(self.fake.buckets[sb][sk].data)
                return self._send(200, f'<CopyObjectResult><ETag>{escape(objects[key].etag)}</ETag><LastModified>{_now_iso()}</LastModified></CopyObjectResult>'.encode())
            obj = objects[key] = _Object(body, self.headers.get("Content-Type", "application/octet-stream"))
            return self._send(200, headers={"ETag": obj.etag})
        if self.command == "DELETE":
            objects.pop(key, None)
            return self._send(204)
        obj = objects.get(key)
        if obj is None:
            return self._xml_error(404, "NoSuchKey", key)
        return self._send_object(obj)

    def _send_object(self, obj: _Object, extra: dict | None = None):
        """200 with the object, or 206 with the part a `Range: bytes=A-B` header asks for."""
        headers = {**self._object_headers(obj), "Accept-Ranges": "bytes", **(extra or {})}
        m = re.fullmatch(r"bytes=(\d*)-(\d*)", self.headers.get("Range", ""))
        if not m:
            return self._send(200, obj.data, obj.content_type, headers)
        size = len(obj.data)
        start, end = m.groups()
        first = int(start) if start else max(size - int(end), 0)
        last = min(int(end), size - 1) if start and end else size - 1
        headers["Content-Range"] = f"bytes {first}-{last}/{size}"
        return self._send(206, obj.data[first:last + 1], obj.content_type, headers)


# ===================================================================== S3


def _sigv4(secret: str, date: str, region: str, service: str, string_to_sign: str) -> str:
    key = ("AWS4" + secret).encode()
    for part in (date, region, service, "aws4_request"):
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    return hmac.new(key, string_to_sign.encode(), hashlib.sha256).hexdigest()


def _decode_aws_chunked(body: bytes) -> bytes:
    """The payload of a STREAMING-AWS4-HMAC-SHA256-PAYLOAD body (minio-go signs uploads so over http)."""
    out, pos = b"", 0
    while True:
        eol = body.index(b"\r\n", pos)
        size = int(body[pos:eol].split(b";")[0], 16)
        if size == 0:
            return out
        out += body[eol + 2: eol + 2 + size]
        pos = eol + 2 + size + 2


class _S3Handler(_Handler):
    def _auth(self, raw_path: str, raw_query: str, body: bytes) -> tuple[dict, str | None]:
        """Parses and verifies SigV4 against the secret the fake STS issued for the key id.
        Returns the record and an error code (None when the signature is valid)."""
        auth = self.headers.get("Authorization", "")
        rec = {"access_key": None, "session_token": self.headers.get("x-amz-security-token"),
               "signature": None, "bearer": None}
        m = re.match(r"AWS4-HMAC-SHA256 Credential=([^/]+)/(\d{8})/([^/]*)/([^/]+)/aws4_request,\s*"
                     r"SignedHeaders=([^,]+),\s*Signature=([0-9a-f]+)", auth)
        if not m:
            rec["signature"] = "missing"
            return rec, "AccessDenied"
        akid, date, region, service, signed, signature = m.groups()
        rec["access_key"] = akid
        secret = self.fake.secret_for(akid)
        if secret is None:
            rec["signature"] = "unknown-key"
            return rec, "InvalidAccessKeyId"
        pairs = []
        for part in raw_query.split("&") if raw_query else []:
            k, _, v = part.partition("=")
            pairs.append((_uri_encode(urllib.parse.unquote(k)), _uri_encode(urllib.parse.unquote(v))))
        canonical_query = "&".join(f"{k}={v}" for k, v in sorted(pairs))
        names = signed.split(";")
        canonical_headers = "".join(
            f"{n}:{','.join(' '.join(v.split()) for v in self.headers.get_all(n, []))}\n" for n in names)
        payload = self.headers.get("x-amz-content-sha256") or hashlib.sha256(body).hexdigest()
        canonical = "\n".join([self.command, raw_path, canonical_query, canonical_headers, signed, payload])
        amz_date = self.headers.get("x-amz-date", "")
        to_sign = "\n".join(["AWS4-HMAC-SHA256", amz_date, f"{date}/{region}/{service}/aws4_request",
                             hashlib.sha256(canonical.encode()).hexdigest()])
        ok = hmac.compare_digest(_sigv4(secret, date, region, service, to_sign), signature)
        rec["signature"] = "valid" if ok else "invalid"
        if ok and self.fake.token_for(akid) != rec["session_token"]:
            rec["signature"] = "wrong-session-token"
            return rec, "InvalidToken"
        return rec, None if ok else "SignatureDoesNotMatch"

    def _handle(self):
        raw_path, raw_query, params = self._split()
        body = self._body()
        rec, error = self._auth(raw_path, raw_query, body)
        rec.update(method=self.command, path=urllib.parse.unquote(raw_path), query=raw_query)
        self.fake.record(rec)
        if error:
            return self._xml_error(403, error, f"credential rejected: {rec['signature']}")
        if "aws-chunked" in self.headers.get("Content-Encoding", "") or \
                self.headers.get("x-amz-content-sha256", "").startswith("STREAMING-"):
            body = _decode_aws_chunked(body)
        path = urllib.parse.unquote(raw_path).lstrip("/")
        if not path:
            buckets = "".join(f"<Bucket><Name>{b}</Name><CreationDate>{_now_iso()}</CreationDate></Bucket>"
                              for b in self.fake.buckets)
            return self._send(200, (f'<?xml version="1.0" encoding="UTF-8"?><ListAllMyBucketsResult xmlns="{S3_NS}">'
                                    f"<Owner><ID>fake</ID><DisplayName>fake</DisplayName></Owner>"
                                    f"<Buckets>{buckets}</Buckets></ListAllMyBucketsResult>").encode())
        bucket, _, key = path.partition("/")
        self._bucket_object_api(bucket, key, params, body)

    do_GET = do_PUT = do_HEAD = do_DELETE = do_POST = _handle


class FakeS3(_Fake):
    """Path-style S3. `credentials(akid)` returns the issued {"SecretAccessKey", "SessionToken"}
    for a key id (from the fake STS's log), or None: requests are verified against it and
    answered 403 when the signature or the session token does not match."""

    handler = _S3Handler

    def __init__(self, credentials, buckets=("bucket",)):
        super().__init__(buckets)
        self.credentials = credentials

    def secret_for(self, akid):
        creds = self.credentials(akid)
        return creds and creds["SecretAccessKey"]

    def token_for(self, akid):
        creds = self.credentials(akid)
        return creds and creds["SessionToken"]


class _EcrHandler(_S3Handler):
    def do_POST(self):
        raw_path, raw_query, _ = self._split()
        body = self._body()
        rec, error = self._auth(raw_path, raw_query, body)
        rec.update(method=self.command, path=raw_path, query=raw_query,
                   target=self.headers.get("X-Amz-Target"))
        self.fake.record(rec)
        ctype = "application/x-amz-json-1.1"
        if error:
            return self._send(403, json.dumps({"__type": error, "message": rec["signature"]}).encode(), ctype)
        if rec["target"] != "AmazonEC2ContainerRegistry_V20150921.GetAuthorizationToken":
            return self._send(400, json.dumps({"__type": "UnknownOperationException"}).encode(), ctype)
        password = f"ecr-password-{len(self.fake.records)}"
        self.fake.passwords.append(password)
        doc = {"authorizationData": [{
            "authorizationToken": base64.b64encode(f"AWS:{password}".encode()).decode(),
            "expiresAt": int(dt.datetime.now(dt.timezone.utc).timestamp()) + 43200,
            "proxyEndpoint": "https://123456789012.dkr.ecr.us-east-1.amazonaws.com"}]}
        self._send(200, json.dumps(doc).encode(), ctype)


class FakeECR(FakeS3):
    """ECR's GetAuthorizationToken (awsJson1_1), SigV4-verified like FakeS3; each answer carries a
    fresh password (`passwords`)."""

    handler = _EcrHandler

    def __init__(self, credentials, tls: LoopbackCert, port: int = 443):
        _Fake.__init__(self, (), tls, port)
        self.credentials = credentials
        self.passwords: list[str] = []


# ===================================================================== GCS


class _GcsHandler(_Handler):
    def _object_json(self, bucket: str, name: str, obj: _Object) -> dict:
        quoted = urllib.parse.quote(name, safe="")
        return {"kind": "storage#object", "id": f"{bucket}/{name}/{obj.generation}", "name": name,
                "bucket": bucket, "generation": obj.generation, "metageneration": "1",
                "contentType": obj.content_type, "size": str(len(obj.data)),
                "md5Hash": base64.b64encode(obj.md5).decode(), "etag": obj.md5.hex(),
                "storageClass": "STANDARD",
                "timeCreated": obj.modified.strftime("%Y-%m-%dT%H:%M:%S.000Z"),
                "updated": obj.modified.strftime("%Y-%m-%dT%H:%M:%S.000Z"),
                "selfLink": f"{self.fake.url}/storage/v1/b/{bucket}/o/{quoted}",
                "mediaLink": f"{self.fake.url}/download/storage/v1/b/{bucket}/o/{quoted}?generation={obj.generation}&alt=media"}

    def _json(self, status: int, doc: dict):
        self._send(status, json.dumps(doc).encode(), "application/json; charset=UTF-8")

    def _not_found(self, what: str):
        self._json(404, {"error": {"code": 404, "message": f"No such object: {what}",
                                   "errors": [{"reason": "notFound", "message": what}]}})

    def _handle(self):
        raw_path, raw_query, params = self._split()
        body = self._body()
        token = self._bearer()
        self.fake.record({"method": self.command, "path": urllib.parse.unquote(raw_path), "query": raw_query,
                          "bearer": token, "access_key": None, "session_token": None, "signature": None})
        if not self.fake.token_ok(token):
            return self._json(401, {"error": {"code": 401, "message": "Invalid Credentials",
                                              "errors": [{"reason": "authError"}]}})
        m = re.match(r"^(?:/upload|/download)?/storage/v1/b/([^/]+)(/o(?:/(.*))?)?$", raw_path)
        if not m:  # the XML API: /BUCKET/OBJECT
            path = urllib.parse.unquote(raw_path).lstrip("/")
            bucket, _, key = path.partition("/")
            return self._bucket_object_api(bucket, key, params, body)
        bucket, objects_part, name = m.group(1), m.group(2), m.group(3)
        objects = self.fake.buckets.get(bucket)
        if objects is None:
            return self._not_found(bucket)
        if not objects_part:  # bucket metadata
            return self._json(200, {"kind": "storage#bucket", "name": bucket, "id": bucket})
        get = lambda k, d="": params.get(k, [d])[0]  # noqa: E731
        if name is None:
            if self.command == "POST":  # uploads: media or multipart (google-api-go)
                data, ctype, meta = body, self.headers.get("Content-Type", ""), {}
                if get("uploadType") == "multipart":  # multipart/related: JSON metadata, then the data
                    # apitools quotes the boundary with single quotes and ends lines with \n alone.
                    ctype = re.sub(r"boundary='([^']*)'", r'boundary="\1"', ctype)
                    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
                        b"Content-Type: " + ctype.encode() + b"\r\n\r\n" + body)
                    meta_part, data_part = list(message.iter_parts())[:2]
                    meta = json.loads(meta_part.get_payload(decode=True) or b"{}")
                    data = data_part.get_payload(decode=True)
                    ctype = data_part.get_content_type()
                name = meta.get("name") or get("name")
                obj = objects[name] = _Object(data, meta.get("contentType") or ctype)
                return self._json(200, self._object_json(bucket, name, obj))
            prefix, delimiter = get("prefix"), get("delimiter")
            items, prefixes = [], set()
            for key in sorted(objects):
                if not key.startswith(prefix):
                    continue
                rest = key[len(prefix):]
                if delimiter and delimiter in rest:
                    prefixes.add(prefix + rest.split(delimiter, 1)[0] + delimiter)
                    continue
                items.append(self._object_json(bucket, key, objects[key]))
            doc = {"kind": "storage#objects", "items": items}
            if prefixes:
                doc["prefixes"] = sorted(prefixes)
            return self._json(200, doc)
        name = urllib.parse.unquote(name)
        if self.command == "DELETE":
            if objects.pop(name, None) is None:
                return self._not_found(name)
            return self._send(204)
        obj = objects.get(name)
        if obj is None:
            return self._not_found(name)
        if get("alt") == "media" or raw_path.startswith("/download/"):
            return self._send_object(obj, {"X-Goog-Generation": obj.generation})
        return self._json(200, self._object_json(bucket, name, obj))

    do_GET = do_PUT = do_HEAD = do_DELETE = do_POST = do_PATCH = _handle


class FakeGCS(_Fake):
    """GCS, JSON API (`/storage/v1/...`, uploads on `/upload/storage/v1/...` or the same path) and
    XML API (`/BUCKET/OBJECT`). `token_ok(bearer)` decides whether a bearer token was issued;
    requests with any other are answered 401."""

    handler = _GcsHandler

    def __init__(self, token_ok, buckets=("bucket",), tls: LoopbackCert | None = None):
        super().__init__(buckets, tls)
        self.token_ok = token_ok


# ===================================================================== Azure Blob


class _AzureHandler(_Handler):
    def _handle(self):
        raw_path, raw_query, params = self._split()
        body = self._body()
        token = self._bearer()
        self.fake.record({"method": self.command, "path": urllib.parse.unquote(raw_path), "query": raw_query,
                          "bearer": token, "access_key": None, "session_token": None, "signature": None})
        common = {"x-ms-request-id": "00000000-0000-0000-0000-000000000000", "x-ms-version": "2021-08-06"}
        if not self.fake.token_ok(token):
            err = b'<?xml version="1.0" encoding="utf-8"?><Error><Code>InvalidAuthenticationInfo</Code><Message>bad token</Message></Error>'
            return self._send(401, err, headers=common)
        container, _, blob = urllib.parse.unquote(raw_path).lstrip("/").partition("/")
        objects = self.fake.buckets.get(container)
        if objects is None:
            return self._send(404, b'<?xml version="1.0" encoding="utf-8"?><Error><Code>ContainerNotFound</Code><Message>no</Message></Error>', headers=common)
        if not blob:
            get = lambda k, d="": params.get(k, [d])[0]  # noqa: E731
            prefix = get("prefix")
            blobs = "".join(
                f"<Blob><Name>{escape(k)}</Name><Properties><Creation-Time>{formatdate(o.modified.timestamp(), usegmt=True)}</Creation-Time>"
                f"<Last-Modified>{formatdate(o.modified.timestamp(), usegmt=True)}</Last-Modified><Etag>{o.etag}</Etag>"
                f"<Content-Length>{len(o.data)}</Content-Length><Content-Type>{o.content_type}</Content-Type>"
                f"<BlobType>BlockBlob</BlobType></Properties></Blob>"
                for k, o in sorted(objects.items()) if k.startswith(prefix))
            xml = (f'<?xml version="1.0" encoding="utf-8"?><EnumerationResults ServiceEndpoint="{self.fake.url}/" '
                   f'ContainerName="{container}"><Prefix>{escape(prefix)}</Prefix><Blobs>{blobs}</Blobs><NextMarker/></EnumerationResults>')
            return self._send(200, xml.encode(), headers=common)
        if self.command == "PUT":
            obj = objects[blob] = _Object(body, self.headers.get("x-ms-blob-content-type") or "application/octet-stream")
            return self._send(201, headers={**common, **self._object_headers(obj)})
        if self.command == "DELETE":
            objects.pop(blob, None)
            return self._send(202, headers=common)
        obj = objects.get(blob)
        if obj is None:
            return self._send(404, b'<?xml version="1.0" encoding="utf-8"?><Error><Code>BlobNotFound</Code><Message>no</Message></Error>', headers=common)
        return self._send_object(obj, {**common, "x-ms-blob-type": "BlockBlob"})

    do_GET = do_PUT = do_HEAD = do_DELETE = _handle


class FakeAzureBlob(_Fake):
    """Azure Blob, path-style (`/CONTAINER/BLOB`), bearer tokens only; `token_ok(bearer)` as for GCS."""

    handler = _AzureHandler

    def __init__(self, token_ok, buckets=("container",)):
        super().__init__(buckets)
        self.token_ok = token_ok
