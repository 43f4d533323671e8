"""The callers of a daemon with auth on: the admin and two users, alice and bob, each with a
token of their own."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from deepdockd.tokens import TokenStore

from tests.support.api import Client


def users_tokens(store: TokenStore) -> dict[str, str]:
    """The admin's token and those of two new users, alice and bob."""
    store.ensure_admin()
    return {
        "admin": store.admin_token_path.read_text().strip(),
        "alice": store.add("alice", "user"),
        "bob": store.add("bob", "user"),
    }


@dataclass
class People:
    client: Client
    tokens: dict[str, str]  # caller -> token ("anonymous" has none)

    async def call(self, who: str, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {self.tokens[who]}"} if who in self.tokens else {}
        response = await self.client.request(method, path, json=body, headers=headers)
        text = await response.text()
        return response.status, json.loads(
            text
        ) if response.content_type == "application/json" else text
