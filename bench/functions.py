"""The ``@remote`` functions the benchmark calls.

``process_order`` and ``get_user_summary`` are the product brief's, exactly as the README demo
ships them (``wormhole.demo``). ``follow_chain`` is the case wormhole exists for: ten queries,
each needing the previous one's answer, so no client can pipeline them.
"""

from __future__ import annotations

from wormhole import query, remote
from wormhole.demo import get_user_summary, process_order

CHAIN_LENGTH = 10
MESSAGE_COLUMNS = "id, user_id, body, sent_at"


@remote
def follow_chain(start):
    node = start
    for _ in range(10):
        node = query("SELECT next_id FROM links WHERE id = $1", node)[0]["next_id"]
    return node


@remote
def fetch_messages(limit):
    return query("SELECT id, user_id, body, sent_at FROM messages ORDER BY id LIMIT $1", limit)


ALL = (process_order, get_user_summary, follow_chain, fetch_messages)

__all__ = ["process_order", "get_user_summary", "follow_chain", "fetch_messages", "ALL"]
