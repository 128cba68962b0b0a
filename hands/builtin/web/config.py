"""The web hands' settings, read once from the hand's environment (search keys never travel in a request)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from hands.builtin.web.addresses import AddressPolicy

#: Providers in the order the first one with a key set is chosen when BRAINHANDS_WEB_SEARCH is unset.
PROVIDERS = ("brave", "tavily", "exa", "searxng")
#: provider -> (environment variable holding its key or URL, variable overriding its base URL, default base URL)
PROVIDER_ENV = {
    "brave": ("BRAVE_API_KEY", "BRAINHANDS_BRAVE_URL", "https://api.search.brave.com"),
    "tavily": ("TAVILY_API_KEY", "BRAINHANDS_TAVILY_URL", "https://api.tavily.com"),
    "exa": ("EXA_API_KEY", "BRAINHANDS_EXA_URL", "https://api.exa.ai"),
    "searxng": ("BRAINHANDS_SEARXNG_URL", "", ""),  # the instance's URL is the setting; it needs no key
}


@dataclass(frozen=True)
class SearchConfig:
    """The provider web_search calls ("" for none), its base URL and key."""

    provider: str = ""
    base_url: str = ""
    api_key: str = field(default="", repr=False)
    timeout: float = 15.0

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> SearchConfig:
        timeout = _number(env, "BRAINHANDS_WEB_SEARCH_TIMEOUT", 15.0)
        chosen = env.get("BRAINHANDS_WEB_SEARCH", "").strip().lower()
        if chosen and chosen not in PROVIDERS:
            raise ValueError(f"BRAINHANDS_WEB_SEARCH must be one of {', '.join(PROVIDERS)}, not {chosen!r}")
        if not chosen:
            chosen = next((p for p in PROVIDERS if env.get(PROVIDER_ENV[p][0], "").strip()), "")
            if not chosen:
                return cls(timeout=timeout)
        key_var, url_var, default_url = PROVIDER_ENV[chosen]
        value = env.get(key_var, "").strip()
        if not value:
            raise ValueError(f"BRAINHANDS_WEB_SEARCH={chosen} needs {key_var} in the hand's environment")
        if chosen == "searxng":
            base, key = value, ""
        else:
            base, key = (env.get(url_var, "").strip() or default_url), value
        if not base.startswith(("http://", "https://")):
            raise ValueError(f"{url_var or key_var} must be an http:// or https:// URL, not {base!r}")
        return cls(provider=chosen, base_url=base.rstrip("/"), api_key=key, timeout=timeout)


@dataclass(frozen=True)
class WebConfig:
    """Limits and policy for web_fetch, and the search provider for web_search."""

    allow: AddressPolicy = AddressPolicy()
    max_bytes: int = 5 * 1024 * 1024  # the most a response body may be (after decompression)
    timeout: float = 20.0  # the most one fetch may take, redirects and robots.txt included
    max_redirects: int = 5
    cache_ttl: float = 900.0
    cache_entries: int = 256
    robots: bool = True  # honour robots.txt (BRAINHANDS_WEB_ROBOTS=ignore turns it off)
    user_agent: str = "brainhands-web/0.1"
    search: SearchConfig = SearchConfig()

    def __post_init__(self) -> None:
        for name in ("max_bytes", "max_redirects", "cache_entries"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0 or (name == "max_bytes" and value < 1):
                raise ValueError(f"web config {name}: must be a non-negative integer, not {value!r}")
        for name in ("timeout", "cache_ttl"):
            if getattr(self, name) < 0 or (name == "timeout" and self.timeout == 0):
                raise ValueError(f"web config {name}: must be a positive number of seconds, not {getattr(self, name)!r}")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> WebConfig:
        env = os.environ if environ is None else environ
        robots = env.get("BRAINHANDS_WEB_ROBOTS", "respect").strip().lower() or "respect"
        if robots not in ("respect", "ignore"):
            raise ValueError(f"BRAINHANDS_WEB_ROBOTS must be 'respect' or 'ignore', not {robots!r}")
        return cls(
            allow=AddressPolicy.parse(env.get("BRAINHANDS_WEB_ALLOW", "")),
            max_bytes=int(_number(env, "BRAINHANDS_WEB_MAX_BYTES", cls.max_bytes, integer=True)),
            timeout=_number(env, "BRAINHANDS_WEB_TIMEOUT", cls.timeout),
            max_redirects=int(_number(env, "BRAINHANDS_WEB_MAX_REDIRECTS", cls.max_redirects, integer=True)),
            cache_ttl=_number(env, "BRAINHANDS_WEB_CACHE_TTL", cls.cache_ttl),
            cache_entries=int(_number(env, "BRAINHANDS_WEB_CACHE_ENTRIES", cls.cache_entries, integer=True)),
            robots=robots == "respect",
            search=SearchConfig.from_env(env),
        )


def _number(env: Mapping[str, str], name: str, default: float, *, integer: bool = False) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw) if integer else float(raw)
    except ValueError:
        kind = "an integer" if integer else "a number"
        raise ValueError(f"{name} must be {kind}, not {raw!r}") from None
    if value < 0:
        raise ValueError(f"{name} must not be negative, not {raw!r}")
    return value
