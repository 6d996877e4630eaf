"""Rewrite the generated tables in README.md (settings) from the code. Run after changing config.SETTINGS."""

from __future__ import annotations

import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from provisioner.config import settings_table_markdown  # noqa: E402

README = Path(__file__).resolve().parents[1] / "README.md"


def main() -> int:
    text = README.read_text()
    new = re.sub(r"(<!-- settings:begin -->\n).*?(<!-- settings:end -->)",
                 lambda m: m.group(1) + settings_table_markdown() + "\n" + m.group(2), text, flags=re.S)
    if new != text:
        README.write_text(new)
        print("README.md settings table updated")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
