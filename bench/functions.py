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


# The brief's two functions are nothing but chains of statements and a return of their values:
# in the confined worker's default mode the backend finishes their calls itself (README). These
# variants differ by one call the backend does not evaluate (``int()``), so the worker runs every
# call: they show what the worker itself costs, side by side (implementation "w").


@remote
def process_order_in_worker(order_id, user_id):
    order = query("SELECT * FROM orders WHERE id = $1", order_id)[0]
    inventory = query("SELECT quantity FROM inventory WHERE product_id = $1",
                      order["product_id"])[0]
    if inventory["quantity"] < order["quantity"]:
        raise Exception("Insufficient inventory")
    query("UPDATE inventory SET quantity = quantity - $1 WHERE product_id = $2",
          order["quantity"], order["product_id"])
    query("INSERT INTO transactions (order_id, user_id, amount) VALUES ($1, $2, $3)",
          order_id, user_id, order["total"])
    return {"status": "success", "order_id": int(order_id)}


@remote
def get_user_summary_in_worker(user_id):
    user = query("SELECT * FROM users WHERE id = $1", user_id)[0]
    count = query("SELECT COUNT(*) FROM messages WHERE user_id = $1", user_id)[0]["count"]
    return {"username": user["username"], "message_count": int(count)}


ALL = (process_order, get_user_summary, follow_chain, fetch_messages,
       process_order_in_worker, get_user_summary_in_worker)

__all__ = ["process_order", "get_user_summary", "follow_chain", "fetch_messages",
           "process_order_in_worker", "get_user_summary_in_worker", "ALL"]
