#!/usr/bin/env bash
# Docs link check (no network): every relative link in README.md and docs/*.md must name a file
# that exists, and every `#anchor` (in the same page or another) a heading of that page, with
# GitHub's anchor rules (lower case; punctuation other than `-` and `_` dropped; spaces become
# `-`; a repeated heading gets `-1`, `-2`, …). Links to http(s):// and mailto: are not fetched.
# Links inside code blocks and `code spans` are not links and are skipped. Exits 1 listing every
# broken link as FILE:LINE: target (reason).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 - README.md docs/*.md <<'PY'
import pathlib, re, sys

def strip_code(lines):
    """The lines with fenced code blocks blanked and code spans removed (line numbers kept)."""
    out, fence = [], None
    for line in lines:
        m = re.match(r"^\s*(```+|~~~+)", line)
        if fence:
            if m and m.group(1)[0] == fence[0] and len(m.group(1)) >= len(fence):
                fence = None
            out.append("")
        elif m:
            fence = m.group(1)
            out.append("")
        else:
            out.append(re.sub(r"(`+)(.+?)\1", "", line))
    return out

def slug(heading):
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)   # a link in a heading: its text
    text = text.strip().lower().replace("`", "")
    text = re.sub(r"[^\w\- ]", "", text)                      # \w keeps letters of any script
    return text.replace(" ", "-")

anchors_of = {}
def anchors(path):
    if path not in anchors_of:
        seen, found = {}, set()
        for line in strip_code(path.read_text(encoding="utf-8").splitlines()):
            m = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
            if not m:
                continue
            s = slug(m.group(1))
            n = seen.get(s, 0)
            seen[s] = n + 1
            found.add(s if n == 0 else f"{s}-{n}")
        # explicit HTML anchors: <a id="…"> / <a name="…">
        found |= set(re.findall(r'<a\s+(?:id|name)="([^"]+)"', path.read_text(encoding="utf-8")))
        anchors_of[path] = found
    return anchors_of[path]

link = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]*)>?(?:\s+\"[^\"]*\")?\s*\)")
broken, checked = [], 0
for name in sys.argv[1:]:
    page = pathlib.Path(name)
    for number, line in enumerate(strip_code(page.read_text(encoding="utf-8").splitlines()), 1):
        for target in link.findall(line):
            if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I):   # http:, https:, mailto:, …
                continue
            checked += 1
            path_part, _, anchor = target.partition("#")
            dest = page if path_part == "" else (page.parent / path_part)
            where = f"{name}:{number}: {target}"
            if not dest.exists():
                broken.append(f"{where} (no such file: {dest})")
                continue
            if anchor:
                if dest.is_dir() or dest.suffix.lower() != ".md":
                    broken.append(f"{where} (an anchor into a file that is not Markdown)")
                elif anchor not in anchors(dest):
                    broken.append(f"{where} (no heading '#{anchor}' in {dest})")
for b in broken:
    print(b)
print(f"links: {checked} relative links in {len(sys.argv) - 1} pages, {len(broken)} broken")
sys.exit(1 if broken else 0)
PY
