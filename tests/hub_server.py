"""A Hugging Face Hub stand-in for the tests: the part of the Hub's HTTP protocol that ``huggingface_hub`` uses to
create repos, commit files, list and download them at a revision, and make branches and tags. It listens on
127.0.0.1 only and keeps everything in memory, so the real client code runs without the internet.

Model repos only. Every commit is a full snapshot (path -> bytes) with a made-up 40-hex sha. Private repos answer
404 ``RepoNotFound`` to anyone but their owner, as the Hub does. Uploads are always "regular" (inline base64), never
LFS/Xet, which the preupload answer tells the client."""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Dict, List, Optional, Tuple
from urllib.parse import unquote, urlsplit

TOKENS = {"hf_vithub_test_write_token": "tester", "hf_vithub_test_other_token": "someone-else"}


@dataclass
class Commit:
    sha: str
    files: Dict[str, bytes]
    message: str
    parent: Optional[str]


@dataclass
class Repo:
    owner: str
    private: bool
    commits: Dict[str, Commit] = field(default_factory=dict)
    branches: Dict[str, str] = field(default_factory=dict)
    tags: Dict[str, str] = field(default_factory=dict)

    def resolve(self, revision: str) -> Optional[Commit]:
        revision = unquote(revision)
        sha = self.branches.get(revision) or self.tags.get(revision)
        if sha is None and revision in self.commits:
            sha = revision
        return self.commits.get(sha) if sha else None


class HubState:
    def __init__(self) -> None:
        self.repos: Dict[str, Repo] = {}
        self.lock = threading.Lock()
        self.unhandled: List[str] = []
        self.authorizations: List[str] = []  # every Authorization header seen (a test checks the token was sent)
        self._counter = 0

    def new_sha(self, seed: str) -> str:
        self._counter += 1
        return hashlib.sha1(f"{seed}:{self._counter}:{time.time()}".encode()).hexdigest()

    def commit(self, repo: Repo, branch: str, files: Dict[str, bytes], message: str) -> Commit:
        parent = repo.branches.get(branch)
        commit = Commit(self.new_sha(message), files, message, parent)
        repo.commits[commit.sha] = commit
        repo.branches[branch] = commit.sha
        return commit


REPO_ID = r"(?P<repo>[\w.-]+/[\w.-]+)"
REVISION = r"(?P<revision>[^/]+)"


class HubHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: "HubServer"

    def log_message(self, format: str, *args) -> None:  # quiet: pytest shows failures, not every request
        pass

    # --- helpers ---------------------------------------------------------------------------------------------
    @property
    def state(self) -> HubState:
        return self.server.state

    def user(self) -> Optional[str]:
        header = self.headers.get("Authorization", "")
        if header:
            self.state.authorizations.append(header)
        token = header[7:] if header.startswith("Bearer ") else None
        return TOKENS.get(token) if token else None

    def body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def send(self, status: int, payload=None, headers: Optional[Dict[str, str]] = None, raw: Optional[bytes] = None,
             head: bool = False) -> None:
        data = raw if raw is not None else (json.dumps(payload).encode() if payload is not None else b"")
        self.send_response(status)
        content_type = "application/octet-stream" if raw is not None else "application/json"
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if not head:
            self.wfile.write(data)

    def error(self, status: int, code: str, message: str, head: bool = False) -> None:
        self.send(status, {"error": message}, {"X-Error-Code": code, "X-Error-Message": message}, head=head)

    def readable_repo(self, repo_id: str, head: bool = False) -> Optional[Repo]:
        repo = self.state.repos.get(repo_id)
        if repo is None or (repo.private and self.user() != repo.owner):
            self.error(404 if repo is None else 401, "RepoNotFound", f"Repository {repo_id} not found", head)
            return None
        return repo

    def readable_commit(self, repo_id: str, revision: str, head: bool = False) -> Optional[Tuple[Repo, Commit]]:
        repo = self.readable_repo(repo_id, head)
        commit = repo.resolve(revision) if repo is not None else None
        if repo is not None and commit is None:
            self.error(404, "RevisionNotFound", f"Invalid rev id: {revision}", head)
        return (repo, commit) if commit is not None else None

    def writable_repo(self, repo_id: str) -> Optional[Repo]:
        user = self.user()
        if user is None:
            self.error(401, "Unauthorized", "Invalid credentials in Authorization header")
            return None
        repo = self.readable_repo(repo_id)
        if repo is not None and repo.owner != user:
            self.error(403, "Forbidden", f"{user} cannot write to {repo_id}")
            return None
        return repo

    def route(self, method: str) -> None:
        path = urlsplit(self.path).path
        for pattern, verb, handler in ROUTES:
            match = re.fullmatch(pattern, path)
            if match and verb == method:
                with self.state.lock:
                    handler(self, **match.groupdict())
                return
        self.state.unhandled.append(f"{method} {self.path}")
        self.body()
        self.error(404, "NotImplemented", f"the test Hub does not implement {method} {path}")

    def do_GET(self) -> None:
        self.route("GET")

    def do_HEAD(self) -> None:
        self.route("HEAD")

    def do_POST(self) -> None:
        self.route("POST")

    # --- endpoints ---------------------------------------------------------------------------------------------
    def create_repo(self) -> None:
        user = self.user()
        request = json.loads(self.body() or b"{}")
        if user is None:
            self.error(401, "Unauthorized", "Invalid credentials in Authorization header")
            return
        if request.get("type", "model") not in (None, "model"):
            self.error(400, "BadRequest", "the test Hub has model repos only")
            return
        repo_id = f"{request.get('organization') or user}/{request['name']}"
        if repo_id.split("/")[0] != user:
            self.error(403, "Forbidden", f"{user} cannot create repos in {repo_id.split('/')[0]}")
            return
        url = f"{self.server.endpoint}/{repo_id}"
        if repo_id in self.state.repos:
            self.send(409, {"error": "You already created this model repo", "url": url})
            return
        private = request.get("visibility", "private" if request.get("private") else "public") != "public"
        repo = Repo(owner=user, private=private)
        self.state.repos[repo_id] = repo
        self.state.commit(repo, "main", {".gitattributes": b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n"},
                          "initial commit")
        self.send(200, {"url": url, "name": repo_id, "id": repo_id})

    def validate_yaml(self) -> None:
        """The model card's YAML front matter must parse to a mapping whose list fields are lists."""
        import yaml

        content = json.loads(self.body() or b"{}").get("content", "")
        errors = []
        if content.startswith("---\n") and "\n---" in content[4:]:
            try:
                metadata = yaml.safe_load(content[4:content.index("\n---", 4)])
            except yaml.YAMLError as error:
                metadata, errors = None, [f"invalid YAML: {error}"]
            if not errors and not isinstance(metadata, dict):
                errors.append("the metadata must be a mapping")
            for key in ("tags", "datasets", "metrics"):
                if isinstance(metadata, dict) and key in metadata and not isinstance(metadata[key], list):
                    errors.append(f"{key} must be a list")
        if errors:
            self.send(400, {"errors": [{"message": message} for message in errors]}, {"X-Error-Code": "BadRequest"})
        else:
            self.send(200, {"errors": [], "warnings": []})

    def repo_info(self, repo: str, revision: str = "main") -> None:
        located = self.readable_commit(repo, revision)
        if located is None:
            return
        found, commit = located
        _, commit = located
        self.send(200, {"id": repo, "modelId": repo, "sha": commit.sha, "private": found.private, "gated": False,
                        "disabled": False, "tags": [], "downloads": 0, "likes": 0, "library_name": "timm",
                        "lastModified": "2026-01-01T00:00:00.000Z", "createdAt": "2026-01-01T00:00:00.000Z",
                        "siblings": [{"rfilename": name} for name in sorted(commit.files)]})

    def tree(self, repo: str, revision: str, subpath: str = "") -> None:
        located = self.readable_commit(repo, revision)
        if located is None:
            return
        _, commit = located
        prefix = unquote(subpath).strip("/")
        entries = [{"type": "file", "path": name, "size": len(data), "oid": hashlib.sha1(data).hexdigest()}
                   for name, data in sorted(commit.files.items()) if not prefix or name.startswith(prefix + "/")]
        self.send(200, entries)

    def resolve(self, repo: str, revision: str, filename: str, head: bool = False) -> None:
        located = self.readable_commit(repo, revision, head)
        if located is None:
            return
        _, commit = located
        data = commit.files.get(unquote(filename))
        if data is None:
            self.error(404, "EntryNotFound", f"{filename} does not exist at {revision}", head)
            return
        etag = hashlib.sha256(data).hexdigest()
        self.send(200, raw=data, head=head, headers={"X-Repo-Commit": commit.sha, "ETag": f'"{etag}"',
                                                     "Accept-Ranges": "none"})

    def resolve_head(self, repo: str, revision: str, filename: str) -> None:
        self.resolve(repo, revision, filename, head=True)

    def preupload(self, repo: str, revision: str) -> None:
        request = json.loads(self.body() or b"{}")
        found = self.writable_repo(repo)
        if found is None:
            return
        files = [{"path": item["path"], "uploadMode": "regular", "shouldIgnore": False, "oid": None}
                 for item in request.get("files", [])]
        self.send(200, {"files": files, "commitOid": (found.resolve(revision) or Commit("", {}, "", None)).sha})

    def commit(self, repo: str, revision: str) -> None:
        lines = [json.loads(line) for line in self.body().splitlines() if line.strip()]
        found = self.writable_repo(repo)
        if found is None:
            return
        revision = unquote(revision)
        base = found.resolve(revision)
        if base is None:
            self.error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
            return
        if revision not in found.branches:
            self.error(400, "BadRequest", f"{revision} is not a branch")
            return
        files = dict(base.files)
        message = "commit"
        for line in lines:
            key, value = line["key"], line["value"]
            if key == "header":
                message = value.get("summary") or message
            elif key == "file":
                if value.get("encoding") != "base64":
                    self.error(400, "BadRequest", "only base64 file content is supported")
                    return
                files[value["path"]] = base64.b64decode(value["content"])
            elif key == "deletedFile":
                files.pop(value["path"], None)
            elif key == "deletedFolder":
                folder = value["path"].rstrip("/") + "/"
                files = {name: data for name, data in files.items() if not name.startswith(folder)}
            else:
                self.error(400, "BadRequest", f"the test Hub does not support {key} operations (LFS)")
                return
        commit = self.state.commit(found, revision, files, message)
        self.send(200, {"commitUrl": f"{self.server.endpoint}/{repo}/commit/{commit.sha}", "commitOid": commit.sha,
                        "commitMessage": message, "pullRequestUrl": None})

    def create_branch(self, repo: str, branch: str) -> None:
        request = json.loads(self.body() or b"{}")
        found = self.writable_repo(repo)
        if found is None:
            return
        branch = unquote(branch)
        if branch in found.branches:
            self.send(409, {"error": f"Reference already exists: refs/heads/{branch}"})
            return
        start = found.resolve(request.get("startingPoint") or "main")
        if start is None:
            self.error(404, "RevisionNotFound", f"Invalid rev id: {request.get('startingPoint')}")
            return
        found.branches[branch] = start.sha
        self.send(200, {})

    def create_tag(self, repo: str, revision: str) -> None:
        request = json.loads(self.body() or b"{}")
        found = self.writable_repo(repo)
        if found is None:
            return
        commit = found.resolve(revision)
        if commit is None:
            self.error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
            return
        if request["tag"] in found.tags:
            self.send(409, {"error": f"Tag {request['tag']} already exists"})
            return
        found.tags[request["tag"]] = commit.sha
        self.send(200, {})


ROUTES: List[Tuple[str, str, object]] = [
    (r"/api/repos/create", "POST", HubHandler.create_repo),
    (r"/api/validate-yaml", "POST", HubHandler.validate_yaml),
    (rf"/api/models/{REPO_ID}", "GET", HubHandler.repo_info),
    (rf"/api/models/{REPO_ID}/revision/{REVISION}", "GET", HubHandler.repo_info),
    (rf"/api/models/{REPO_ID}/tree/{REVISION}", "GET", HubHandler.tree),
    (rf"/api/models/{REPO_ID}/tree/{REVISION}/(?P<subpath>.+)", "GET", HubHandler.tree),
    (rf"/api/models/{REPO_ID}/preupload/{REVISION}", "POST", HubHandler.preupload),
    (rf"/api/models/{REPO_ID}/commit/{REVISION}", "POST", HubHandler.commit),
    (rf"/api/models/{REPO_ID}/branch/(?P<branch>[^/]+)", "POST", HubHandler.create_branch),
    (rf"/api/models/{REPO_ID}/tag/{REVISION}", "POST", HubHandler.create_tag),
    (rf"/{REPO_ID}/resolve/{REVISION}/(?P<filename>.+)", "GET", HubHandler.resolve),
    (rf"/{REPO_ID}/resolve/{REVISION}/(?P<filename>.+)", "HEAD", HubHandler.resolve_head),
]


class HubServer(ThreadingHTTPServer):
    """``with HubServer(port) as hub:`` serves on ``hub.endpoint`` from a thread until the block ends."""

    daemon_threads = True

    def __init__(self, port: int = 0) -> None:
        super().__init__(("127.0.0.1", port), HubHandler)
        self.state = HubState()
        self.endpoint = f"http://127.0.0.1:{self.server_address[1]}"
        self._thread = threading.Thread(target=self.serve_forever, daemon=True)

    def __enter__(self) -> "HubServer":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()
        self.server_close()


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
