"""How MLflow's client would talk to a tracking server: from its URI and the environment.

``settings`` gives the request headers (authentication resolved as MLflow and requests resolve
it) and the TLS context; a configuration this cannot reproduce exactly (custom auth, AWS SigV4,
request header plugins, conflicting TLS settings...) raises ``Unsupported``, and MLflow's client
makes the call instead. ``proxied`` tells whether requests would go through a proxy. Nothing
here may import mlflow.
"""
from __future__ import annotations

import base64
import os
import ssl
import sys
import urllib.parse

from projectrun.stores import Unsupported


def settings(uri: str) -> tuple[dict[str, str], ssl.SSLContext | None]:
    """(headers, TLS context for https) for every request to the tracking server ``uri``."""
    parsed = urllib.parse.urlsplit(uri)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise Unsupported(f"tracking URI {uri}")
    if parsed.username or parsed.password or parsed.query or parsed.fragment:
        raise Unsupported("credentials, query or fragment in the tracking URI")
    for name in ("MLFLOW_TRACKING_AUTH", "MLFLOW_WORKSPACE"):
        if os.environ.get(name, "").strip():
            raise Unsupported(f"{name} is set")
    if _env_bool("MLFLOW_TRACKING_AWS_SIGV4"):
        raise Unsupported("MLFLOW_TRACKING_AWS_SIGV4 is set")
    _env_bool("MLFLOW_TRACKING_INSECURE_TLS")  # MLflow's client rejects a bad value for http too
    plugins = _header_plugins()
    if plugins:
        raise Unsupported(f"MLflow request header plugins installed: {', '.join(plugins)}")
    context = _ssl_context() if parsed.scheme == "https" else None
    headers = {"User-Agent": "projectrun", "Accept": "application/json"}
    auth = _authorization(parsed.hostname)
    if auth:
        headers["Authorization"] = auth
    return headers, context


def _env_bool(name: str) -> bool:
    """MLflow's boolean env parsing; a value it would reject is left to its client to report."""
    value = os.environ.get(name, "").strip().lower()
    if value in ("", "false", "0"):
        return False
    if value in ("true", "1"):
        return True
    raise Unsupported(f"{name}={os.environ[name]!r}")


def _header_plugins() -> list[str]:
    """Installed ``mlflow.request_header_provider`` plugins: their headers are MLflow-only.

    A manual scan of the dist-info entry points takes about a millisecond, where
    importlib.metadata costs tens of them.
    """
    found = []
    for entry in sys.path:
        try:
            names = os.listdir(entry or ".")
        except OSError:
            continue
        for name in names:
            if name.endswith((".dist-info", ".egg-info")):
                try:
                    with open(os.path.join(entry or ".", name, "entry_points.txt"), encoding="utf-8") as f:
                        if "mlflow.request_header_provider" in f.read():
                            found.append(name)
                except OSError:
                    continue
    return found


def proxied(scheme: str, host: str) -> bool:
    """Whether requests (MLflow's HTTP library) would go through a proxy from the environment."""
    env = {k.lower(): v for k, v in os.environ.items() if k.lower().endswith("_proxy") and v}
    if not (env.get(f"{scheme}_proxy") or env.get("all_proxy")):
        return False
    # urllib's proxy_bypass_environment, which requests consults; entries with a port or a
    # CIDR range are left to MLflow's client.
    for entry in (e.strip().lower().lstrip(".") for e in env.get("no_proxy", "").split(",")):
        if entry == "*" or (entry and (host == entry or host.endswith("." + entry))):
            return False
    return True


def _basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def _authorization(host: str) -> str | None:
    """The Authorization header MLflow's client ends up sending.

    MLflow prefers username+password (env, else ~/.mlflow/credentials) over a token; then
    requests replaces either with ~/.netrc credentials when that file has an entry for the host.
    """
    netrc_auth = _netrc_auth(host)
    if netrc_auth:
        return netrc_auth
    user = os.environ.get("MLFLOW_TRACKING_USERNAME") or None
    password = os.environ.get("MLFLOW_TRACKING_PASSWORD") or None
    if not (user and password):
        file_user, file_password = _credentials_file()
        user, password = user or file_user, password or file_password
    if user and password:
        return _basic(user, password)
    token = os.environ.get("MLFLOW_TRACKING_TOKEN")
    return f"Bearer {token}" if token else None


def _credentials_file() -> tuple[str | None, str | None]:
    path = os.path.expanduser("~/.mlflow/credentials")
    if not os.path.exists(path):
        return None, None
    import configparser

    config = configparser.ConfigParser()
    config.read(path)
    if "mlflow" not in config:
        return None, None
    section = config["mlflow"]
    return section.get("mlflow_tracking_username"), section.get("mlflow_tracking_password")


def _netrc_auth(host: str) -> str | None:
    """requests' get_netrc_auth: $NETRC or ~/.netrc or ~/_netrc, parse errors ignored."""
    paths = [os.environ["NETRC"]] if os.environ.get("NETRC") else ["~/.netrc", "~/_netrc"]
    for path in (os.path.expanduser(p) for p in paths):
        if os.path.exists(path):
            import netrc

            try:
                found = netrc.netrc(path).authenticators(host)
            except (netrc.NetrcParseError, OSError):
                return None
            if found:
                return _basic(found[0] or found[1] or "", found[2] or "")
            return None
    return None


def _ssl_context() -> ssl.SSLContext:
    """Verification as MLflow's client does it: its env vars, then requests' CA bundle choice."""
    insecure = _env_bool("MLFLOW_TRACKING_INSECURE_TLS")
    server_cert = os.environ.get("MLFLOW_TRACKING_SERVER_CERT_PATH") or None
    if insecure and server_cert:
        raise Unsupported("both MLFLOW_TRACKING_INSECURE_TLS and MLFLOW_TRACKING_SERVER_CERT_PATH")
    if insecure:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    else:
        bundle = (server_cert or os.environ.get("REQUESTS_CA_BUNDLE")
                  or os.environ.get("CURL_CA_BUNDLE") or None)
        if bundle is None:
            try:
                import certifi  # what requests verifies against by default

                bundle = certifi.where()
            except ImportError:
                pass
        try:
            if bundle and os.path.isdir(bundle):
                ctx = ssl.create_default_context(capath=bundle)
            else:
                ctx = ssl.create_default_context(cafile=bundle)
        except (OSError, ssl.SSLError) as exc:
            raise Unsupported(f"CA bundle {bundle}: {exc}") from None
    client_cert = os.environ.get("MLFLOW_TRACKING_CLIENT_CERT_PATH")
    if client_cert:
        try:
            ctx.load_cert_chain(client_cert)
        except (OSError, ssl.SSLError) as exc:
            raise Unsupported(f"client certificate {client_cert}: {exc}") from None
    return ctx
