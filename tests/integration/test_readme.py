"""README.md's code blocks run as a reader pastes them, top to bottom, in one folder.

The blocks are taken from README.md's fences, in order, and run in one temporary folder
(``.venv`` there is a symlink to the virtualenv running the tests; HOME and TMPDIR are
folders of the test; the venv's ``bin`` is off PATH, so a bare ``nevent-dispatch`` fails
as it would for a reader):

- ```` ```sh ````: with ``bash`` under ``set -euo pipefail``, each within a deadline. The
  shell variables a block leaves (``export``-ed or not) are set again in the next, as in
  one terminal; each block starts in the folder. A block that exits non-zero fails the
  test with its README line, its text and its output.
- ```` ```python ````: in a subprocess of the same interpreter, cwd the folder. A block
  that defines ``signature_valid(raw_body, header, secret)`` (the stdlib check) or
  ``receive(raw_body, headers, secret)`` (the package's) is then called with signed
  bytes bodies: valid, rotated (two ``v1=``, one wrong, either order), wrong, tampered,
  stale, malformed. A block calling ``publish(`` must print the outbox id it returned,
  and that row must be in the quick start's outbox.
- ```` ```sql ````: a ``CREATE TABLE`` must equal, whitespace and comments aside, what
  ``init`` created in the quick start's outbox (``var/nevent.db``); an ``INSERT`` is run
  there with its ``?`` bound to a sample event, and the row gets its defaults.
- Other fences (``text``, ``http``, ``json``, none) are not run.

Conventions, as an HTML comment on the line just before a fence (invisible on GitHub):

- ``<!-- readme-test: background -->``: started in the background with the variables of
  the blocks before it (``listen`` in "a first terminal", the daemon serving the API);
  the walk goes on once the block prints a line containing ``listening``; it is stopped
  (SIGTERM to its process group, SIGKILL after a deadline) when the walk ends, however
  it ends.
- ``<!-- readme-test: skip — reason -->``: not run; the reason is required, and the list
  stays short (``MAX_SKIPS``).

Placeholders, replaced in a block's text before it runs:

- ``wh_…``: the last ``wh_<16 hex>`` id printed by an earlier block ("the id printed
  above");
- ``<delivery>``: the first delivery uuid printed by the latest earlier block that
  printed one (lists are newest first);
- ``8787`` and ``8788`` (the README's ``listen`` and API ports): free ports on
  127.0.0.1, so that the walk never meets another process's server.

Nothing but 127.0.0.1 is contacted: the README's runnable examples use the local
receiver; customer URLs appear only in text.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import pytest

from ..conftest import free_port
from ..reliability.core_support import wait_for

README = Path(__file__).resolve().parents[2] / "README.md"

#: Seconds one block may take (``demo`` waits up to 60 s for its deliveries itself).
BLOCK_TIMEOUT_S = 90.0
#: Seconds a background block has to print its ``listening`` line, and to stop.
BACKGROUND_TIMEOUT_S = 30.0
#: Most blocks the README may mark as not runnable.
MAX_SKIPS = 5
#: What a background block prints once it serves.
READY_WORD = "listening"

FENCE = re.compile(r"^```([\w-]*)\s*$")
#: ``<!-- readme-test: KIND -->`` or ``<!-- readme-test: KIND — reason -->`` (or ``-``, ``--``).
DIRECTIVE = re.compile(
    r"^<!--\s*readme-test:\s*(?P<kind>[\w-]+)\s*(?:(?:—|--|-)\s*(?P<reason>.*?))?\s*-->\s*$")
WEBHOOK_ID = re.compile(r"\bwh_[0-9a-f]{16}\b")
DELIVERY_UUID = re.compile(r"\b[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\b")
README_PORTS = ("8787", "8788")
#: Fence labels of shell commands that would silently not run: commands are ```sh.
SHELL_LABELS = ("bash", "shell", "console", "zsh")


@dataclass(frozen=True)
class Block:
    """One fenced block of the README."""

    line: int  # the opening fence's line, 1-based
    lang: str
    text: str
    section: str  # the "## " heading it is under
    directive: str | None  # "background", "skip" or None
    reason: str

    def where(self) -> str:
        return f"README.md line {self.line} ({self.section})"


def parse_readme(text: str) -> list[Block]:
    """Every fenced block with its heading and its ``readme-test`` directive."""
    blocks: list[Block] = []
    lines = text.splitlines()
    section, i = "top", 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("## "):
            section = line[3:].strip()
        fence = FENCE.match(line)
        if fence is None:
            i += 1
            continue
        body_start = i + 1
        end = body_start
        while end < len(lines) and not lines[end].startswith("```"):
            end += 1
        assert end < len(lines), f"README.md line {i + 1}: a fence that is never closed"
        directive, reason = None, ""
        previous = lines[i - 1].strip() if i else ""
        if "readme-test" in previous:
            match = DIRECTIVE.match(previous)
            assert match is not None and match["kind"] in ("background", "skip"), (
                f"README.md line {i}: unknown readme-test directive {previous!r} "
                "(background, or skip — reason)")
            directive, reason = match["kind"], (match["reason"] or "").strip()
        blocks.append(Block(i + 1, fence[1], "\n".join(lines[body_start:end]) + "\n", section,
                            directive, reason))
        i = end + 1
    return blocks


def _code_part(line: str) -> str:
    """A shell line without its comment (a ``#`` at the start or after a space)."""
    return re.split(r"(?:^|\s)#", line, maxsplit=1)[0]


def normalized_sql(sql: str) -> str:
    """SQL without comments, with single spaces and none inside brackets or before commas."""
    text = " ".join(re.sub(r"--[^\n]*", "", sql).split()).rstrip(";").strip()
    return re.sub(r"\s*([(),])\s*", r"\1", text)


# -- what the signature snippets are called with -------------------------------------------------

#: Signed bodies for the signature snippets, made with the daemon's own signer and with an
#: independent HMAC for the wrong (rotated-out) secret; a bytes body that is not ASCII.
SIGNATURE_FIXTURES = '''
import hashlib as _hashlib, hmac as _hmac, time as _time
from nevent_dispatch import sign as _sign

_secret = "whsec_readme_current"
_body = '{"id": "evt_readme", "type": "fan.created", "data": {"fan": {"city": "Logroño"}}}'.encode()
_now = int(_time.time())
_good = _sign(_secret, _now, _body)
_right = _good.split("v1=", 1)[1]
_wrong = _hmac.new(b"whsec_readme_previous", b"%d." % _now + _body, _hashlib.sha256).hexdigest()
_stale_t = _now - 301
_stale = _sign(_secret, _stale_t, _body)
_headers = {
    "valid": _good,
    "rotated, wrong first": f"t={_now},v1={_wrong},v1={_right}",
    "rotated, right first": f"t={_now},v1={_right},v1={_wrong}",
    "wrong secret": f"t={_now},v1={_wrong}",
    "stale": _stale,
    "malformed": "v1=abc",
}
_should_pass = ("valid", "rotated, wrong first", "rotated, right first")
'''

CHECK_STDLIB = SIGNATURE_FIXTURES + '''
for _name, _header in _headers.items():
    _got = signature_valid(_body, _header, _secret)
    assert _got is (_name in _should_pass), f"signature_valid, {_name}: {_got!r}"
assert signature_valid(_body + b" ", _good, _secret) is False, "a tampered body passed"
print("signature_valid: checked")
'''

CHECK_PACKAGE = SIGNATURE_FIXTURES + '''
for _name, _header in _headers.items():
    _status, _detail = receive(_body, {"X-Nevent-Signature": _header}, _secret)
    assert (_status == 200) is (_name in _should_pass), f"receive, {_name}: {_status} {_detail}"
    assert _status in (200, 401) and _detail, f"receive, {_name}: {_status} {_detail!r}"
assert receive(_body, {}, _secret)[0] == 401, "a request without a signature passed"
assert receive(_body, {"X-Nevent-Signature": _stale}, _secret) == (401, "timestamp too old")
print("receive: checked")
'''


# -- the walk --------------------------------------------------------------------------------------

FOREGROUND_PRELUDE = """set -euo pipefail
__readme_known=" $(compgen -v | tr '\\n' ' ') "
source {vars}
__readme_save() {{
    local __readme_name
    for __readme_name in $(compgen -v); do
        case "$__readme_known" in *" $__readme_name "*) continue ;; esac
        case "$__readme_name" in __readme*|BASH*|FUNCNAME|PIPESTATUS|_) continue ;; esac
        declare -p "$__readme_name"
    done > {vars}.new && mv {vars}.new {vars}
}}
trap __readme_save EXIT
cd {folder}
"""

BACKGROUND_PRELUDE = "set -euo pipefail\nsource {vars}\ncd {folder}\n"


@dataclass
class Background:
    block: Block
    proc: subprocess.Popen[bytes]
    log: IO[bytes]
    log_path: Path

    def output(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")


class Walk:
    """The README's blocks run in order in ``folder``; the harness's own files in ``harness``."""

    def __init__(self, folder: Path, harness: Path, home: Path) -> None:
        self.folder, self.harness = folder, harness
        self.vars = harness / "vars.sh"
        self.vars.write_text("")
        self.outputs: list[str] = []
        self.background: list[Background] = []
        self.ports: dict[str, str] = {}
        while len(set(self.ports.values())) < len(README_PORTS):
            self.ports = {port: str(free_port()) for port in README_PORTS}
        bin_dir = str(Path(sys.prefix) / "bin")
        self.env = {k: v for k, v in os.environ.items()
                    if k not in ("NEVENT_DISPATCH_CONFIG", "NEVENT_DISPATCH_DEBUG", "VIRTUAL_ENV")}
        self.env.update(
            HOME=str(home), TMPDIR=str(home), XDG_CONFIG_HOME=str(home / ".config"),
            XDG_CACHE_HOME=str(home / ".cache"), NO_COLOR="1", PYTHONUNBUFFERED="1",
            PATH=os.pathsep.join(p for p in os.environ.get("PATH", "").split(os.pathsep)
                                 if p and os.path.abspath(p) != bin_dir))

    # -- placeholders

    def substitute(self, block: Block) -> str:
        text = block.text
        for readme_port, port in self.ports.items():
            text = re.sub(rf"(?<!\d){readme_port}(?!\d)", port, text)
        if "wh_…" in text:
            ids = WEBHOOK_ID.findall("".join(self.outputs))
            assert ids, f"{block.where()}: wh_… but no earlier block printed a webhook id"
            text = text.replace("wh_…", ids[-1])
        if "<delivery>" in text:
            printed = [found for found in (DELIVERY_UUID.findall(out) for out in self.outputs)
                       if found]
            assert printed, f"{block.where()}: <delivery> but no earlier block printed one"
            text = text.replace("<delivery>", printed[-1][0])
        return text

    def _script(self, block: Block, prelude: str) -> Path:
        path = self.harness / f"block_{block.line}.{'py' if block.lang == 'python' else 'sh'}"
        head = prelude.format(vars=self.vars, folder=self.folder) if prelude else ""
        path.write_text(head + self.substitute(block), encoding="utf-8")
        return path

    def _run(self, block: Block, argv: list[str]) -> str:
        proc = subprocess.Popen(argv, cwd=self.folder, env=self.env, stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            raw, _ = proc.communicate(timeout=BLOCK_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            _kill_group(proc.pid)  # not reaped yet: the group is still this block's
            raw, _ = proc.communicate()
            raise AssertionError(self._failure(block, f"still running after {BLOCK_TIMEOUT_S} s",
                                               raw.decode(errors="replace"))) from None
        output = raw.decode(errors="replace")
        assert proc.returncode == 0, self._failure(block, f"exit {proc.returncode}", output)
        self.outputs.append(output)
        return output

    def _failure(self, block: Block, what: str, output: str) -> str:
        return (f"{block.where()}: {what}\n--- block ---\n{self.substitute(block)}"
                f"--- output ---\n{output}")

    # -- the kinds of block

    def sh(self, block: Block) -> str:
        return self._run(block, ["bash", str(self._script(block, FOREGROUND_PRELUDE))])

    def start_background(self, block: Block) -> None:
        script = self._script(block, BACKGROUND_PRELUDE)
        log_path = self.harness / f"block_{block.line}.log"
        log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        proc = subprocess.Popen(["bash", str(script)], cwd=self.folder, env=self.env,
                                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        started = Background(block, proc, log, log_path)
        self.background.append(started)
        # The leader is reaped only in stop(), so its process group stays this block's.
        wait_for(lambda: READY_WORD in started.output() or not _members(proc.pid),
                 BACKGROUND_TIMEOUT_S, f"{block.where()} to print {READY_WORD!r}")
        assert _members(proc.pid), self._failure(block, "exited in the background",
                                                 started.output())

    def python(self, block: Block) -> str:
        extra = ""
        if "def signature_valid(" in block.text:
            extra = CHECK_STDLIB
        elif "def receive(" in block.text:
            extra = CHECK_PACKAGE
        script = self._script(block, "")
        script.write_text(script.read_text(encoding="utf-8") + extra, encoding="utf-8")
        output = self._run(block, [sys.executable, str(script)])
        if "publish(" in block.text:
            self._check_published(block, output)
        return output

    def _check_published(self, block: Block, output: str) -> None:
        last = output.strip().splitlines()[-1] if output.strip() else ""
        assert last.isdigit(), self._failure(block, "publish(): the block must print the "
                                             "outbox id it returned", output)
        with contextlib.closing(sqlite3.connect(self.outbox)) as conn:
            row = conn.execute("SELECT type FROM outbox WHERE id = ?", (int(last),)).fetchone()
        assert row is not None, self._failure(block, f"no outbox row {last}", output)

    @property
    def outbox(self) -> Path:
        """The quick start's outbox: ``database.outbox``'s default under the folder."""
        path = self.folder / "var" / "nevent.db"
        assert path.exists(), "no var/nevent.db: the quick start's blocks should have made it"
        return path

    def sql(self, block: Block) -> None:
        with contextlib.closing(sqlite3.connect(self.outbox)) as conn:
            created = re.search(r"CREATE TABLE (\w+)", block.text)
            if created is not None:
                row = conn.execute("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = ?",
                                   (created[1],)).fetchone()
                assert row is not None, f"{block.where()}: init made no table {created[1]}"
                assert normalized_sql(block.text) == normalized_sql(row[0]), (
                    f"{block.where()}: the README's table differs from init's:\n{row[0]}")
            elif block.text.lstrip().upper().startswith("INSERT INTO OUTBOX"):
                with conn:
                    cur = conn.execute(block.text, ("fan.created", "org_readme_sql",
                                                    '{"fan": {"id": "fan_readme"}}'))
                event_id, created_at = conn.execute(
                    "SELECT event_id, created FROM outbox WHERE id = ?", (cur.lastrowid,)).fetchone()
                assert re.fullmatch(r"evt_[0-9a-f]{24}", event_id), event_id
                assert isinstance(created_at, int), created_at
            else:
                raise AssertionError(f"{block.where()}: an SQL block the test cannot check")

    def stop(self) -> None:
        """SIGTERM every background block's process group, SIGKILL what outlives the deadline."""
        for started in self.background:
            _kill_group(started.proc.pid, signal.SIGTERM)
        for started in self.background:
            with contextlib.suppress(AssertionError):
                wait_for(lambda pid=started.proc.pid: not _members(pid),  # type: ignore[misc]
                         BACKGROUND_TIMEOUT_S, f"{started.block.where()} to stop")
            _kill_group(started.proc.pid)
            started.proc.wait(10)
            started.log.close()


def _members(pgid: int) -> list[int]:
    """The live (not zombie) processes of process group ``pgid``, from /proc."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[0] != "Z" and int(fields[2]) == pgid:
            found.append(int(stat.parent.name))
    return found


def _kill_group(pgid: int, signum: int = signal.SIGKILL) -> None:
    """Signal the process group a block was started in, while its leader is our unreaped child."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signum)


@pytest.fixture
def walk(tmp_path: Path) -> Iterator[Walk]:
    folder, harness, home = tmp_path / "readme", tmp_path / "harness", tmp_path / "home"
    for path in (folder, harness, home):
        path.mkdir()
    (folder / ".venv").symlink_to(sys.prefix, target_is_directory=True)
    started = Walk(folder, harness, home)
    try:
        yield started
    finally:
        started.stop()


# -- the tests -------------------------------------------------------------------------------------


@pytest.mark.timeout(600)
def test_every_code_block_of_the_readme_runs_as_pasted(walk: Walk) -> None:
    """Every sh, python and sql block of README.md runs, in order, in one folder, and passes."""
    ran: dict[str, int] = {"sh": 0, "python": 0, "sql": 0, "background": 0}
    checked: set[str] = set()
    for block in parse_readme(README.read_text(encoding="utf-8")):
        if block.directive == "skip" or block.lang not in ran:
            continue
        if block.directive == "background":
            assert block.lang == "sh", f"{block.where()}: only sh blocks run in the background"
            walk.start_background(block)
            ran["background"] += 1
            continue
        output = getattr(walk, block.lang)(block)
        ran[block.lang] += 1
        checked.update(word for word in ("signature_valid", "receive")
                       if output and f"{word}: checked" in output)
    # A renamed snippet must not slip out of its checks.
    assert checked == {"signature_valid", "receive"}, checked
    assert ran["sql"] >= 2 and ran["background"] >= 1 and ran["sh"] >= 5, ran


def test_readme_blocks_follow_the_conventions() -> None:
    """One invocation throughout, commands fenced as sh, few skips and each says why."""
    blocks = parse_readme(README.read_text(encoding="utf-8"))
    skips = [b for b in blocks if b.directive == "skip"]
    assert len(skips) <= MAX_SKIPS, [b.where() for b in skips]
    for block in skips:
        assert block.reason, f"{block.where()}: a skip must say why"
    for block in blocks:
        assert block.lang not in SHELL_LABELS, (
            f"{block.where()}: label commands ```sh (run by this test) or ```text (not run)")
        if block.lang != "sh":
            continue
        for number, line in enumerate(block.text.splitlines(), block.line + 1):
            bare = re.search(r"(?<![\w./-])nevent-dispatch\b", _code_part(line))
            assert bare is None, (f"README.md line {number}: write .venv/bin/nevent-dispatch, "
                                  f"as everywhere after the quick start: {line.strip()}")


def test_the_readme_parser_reads_directives_and_sections() -> None:
    """The block reader sees a fence's language, heading, directive and reason."""
    text = ("## One\n<!-- readme-test: skip — needs root -->\n```sh\nsudo x\n```\n"
            "## Two\n<!-- readme-test: background -->\n```sh\nlisten\n```\n```text\nout\n```\n")
    one, two, three = parse_readme(text)
    assert (one.line, one.lang, one.section, one.directive, one.reason) == (
        3, "sh", "One", "skip", "needs root")
    assert (two.section, two.directive, two.text) == ("Two", "background", "listen\n")
    assert (three.lang, three.directive) == ("text", None)
    with pytest.raises(AssertionError, match="unknown readme-test directive"):
        parse_readme("<!-- readme-test: skipp -->\n```sh\nx\n```\n")
    assert normalized_sql("CREATE TABLE t (\n  a INT, -- note\n  b TEXT\n);") == \
        "CREATE TABLE t(a INT,b TEXT)"
