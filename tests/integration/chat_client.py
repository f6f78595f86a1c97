"""Run inside a namespace: send chat requests concurrently, print the replies as JSON lines.

usage: chat_client.py URL TOKEN_FILE REQUESTS_JSON
"""

from __future__ import annotations

import json
import sys
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any


def ask(url: str, token: str, body: dict[str, Any]) -> dict[str, Any]:
    request = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=240) as resp:
            data = json.loads(resp.read())
        choice = data["choices"][0]
        return {
            "text": choice["message"]["content"],
            "finish": choice["finish_reason"],
            "model": data["model"],
        }
    except Exception as exc:
        return {"error": f"{type(exc).__name__}: {exc}"}


def main() -> None:
    url, token_file, bodies = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    token = Path(token_file).read_text().strip()
    with ThreadPoolExecutor(len(bodies)) as pool:
        for result in pool.map(lambda b: ask(url, token, b), bodies):
            print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
