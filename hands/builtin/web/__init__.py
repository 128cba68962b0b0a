"""The web hands: web_search over Brave, Tavily, Exa or SearXNG, and web_fetch of a page as markdown."""

from hands.builtin.web.addresses import AddressPolicy
from hands.builtin.web.config import SearchConfig, WebConfig
from hands.builtin.web.service import HANDS, make_web_hands

__all__ = ["HANDS", "AddressPolicy", "SearchConfig", "WebConfig", "make_web_hands"]
