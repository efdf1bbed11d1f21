"""``teachcam inbox``: the running daemon's review inbox — the moments it was unsure about, to label or discard."""

from __future__ import annotations

import json
import time


def register(sub) -> None:
    p = sub.add_parser("inbox", help="(device) the moments the daemon was unsure about: list, label, discard",
                       description="The review inbox of the running daemon (through its control socket): frames it "
                                   "was unsure about — barely recognised, two classes nearly tied, an answer that "
                                   "flickered, something unrecognised that stayed. Label one and it is enrolled "
                                   "(its stored embedding: no camera needed) and leaves the inbox; `teachcam store "
                                   "undo` takes it back like any enrollment. Turn it off with [inbox] enabled = "
                                   "false in the config.",
                       epilog="examples:  teachcam inbox   ·   teachcam inbox label 18c2f3a9b1c2 mug   ·   "
                              "teachcam inbox discard 18c2f3a9b1c2   ·   teachcam inbox clear")
    p.add_argument("action", nargs="?", default="list", choices=("list", "label", "discard", "clear", "save"),
                   help="list (default), label ID CLASS, discard ID, clear (discard every item), save ID FILE.jpg")
    p.add_argument("args", nargs="*", metavar="ARG", help="the item's id, then the class (label) or the file (save)")
    p.add_argument("--json", action="store_true", help="print the daemon's answer as JSON")


def _need(args, count: int, usage: str) -> list[str]:
    from teachcam.edge.errors import TeachcamError

    if len(args.args) != count:
        raise TeachcamError(f"usage: teachcam inbox {usage}")
    return args.args


def cmd_inbox(args) -> int:
    from teachcam.edge.link.client import ControlClient

    with ControlClient() as client:
        if args.action == "label":
            item, label = _need(args, 2, "label ID CLASS")
            result = client.request("inbox_label", item=item, label=label)
            text = f"labelled {item} as {result['label']} ({result['count']} example(s) now); {result['inbox']} left"
        elif args.action == "discard":
            (item,) = _need(args, 1, "discard ID")
            result = client.request("inbox_discard", item=item)
            text = f"discarded {item}; {result['inbox']} left"
        elif args.action == "clear":
            _need(args, 0, "clear")
            result = client.request("inbox_discard", all=True)
            text = f"discarded {result['discarded']} item(s); the inbox is empty"
        elif args.action == "save":
            import base64
            from pathlib import Path

            item, path = _need(args, 2, "save ID FILE.jpg")
            result = client.request("inbox", item=item)
            Path(path).write_bytes(base64.b64decode(result["jpeg"]))
            result, text = {"id": item, "file": path}, f"saved {item}'s picture to {path}"
        else:
            _need(args, 0, "list")
            result = client.request("inbox")
            text = _listing(result)
    print(json.dumps(result, ensure_ascii=False) if args.json else text)
    return 0


def _listing(result: dict) -> str:
    items = result["items"]
    if not items:
        return "the inbox is empty: nothing the daemon was unsure about (or it was all labelled)"
    lines = [f"{len(items)} moment(s) to label (of at most {result['size']}), the most useful first:"]
    for item in items:
        when = time.strftime("%a %H:%M", time.localtime(item["last"]))
        guesses = " or ".join(f"{label} {p:.0%}" for label, p in item["guesses"][:2]) or "no classes yet"
        seen = f", seen {item['seen']}×" if item["seen"] > 1 else ""
        lines.append(f"  {item['id']}  {when}  {item['reason']:<8} {guesses}{seen}")
    lines.append("label one:  teachcam inbox label ID CLASS     drop one:  teachcam inbox discard ID")
    return "\n".join(lines)


COMMANDS = {"inbox": cmd_inbox}
