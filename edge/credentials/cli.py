"""``checkpoint verify`` and ``checkpoint admin mint`` (credentials.md §2.4, §3.1).

``checkpoint verify [--json] [--trust FILE] [--at ISO8601] (TEXT... | --image FILE | -)``
verifies each text (``-`` reads one text per line from stdin, which keeps credentials
out of shell history and ``ps``) or each code found in the image, and prints one
result per text: the JSON object of §3.1 per line with ``--json``, else a short
bilingual summary with masked personal data (§7.3). Exit status: 0 every text ok,
1 some not ok, 2 a usage error or no code in the image.

Without ``--trust`` the trust part of the bundle in force is used (the gate's
``--config``/``$CHECKPOINT_CONFIG`` data directory); without a bundle, an empty trust
(every ``kid`` check false), said on stderr.

``checkpoint admin mint --kind K --key KEYFILE --claims FILE.json [--expires-in 72h]
[--qr OUT.png]`` issues a CK1 credential: the text on stdout, the key id, expiry and
revocation hash on stderr. Exit 0; 1 when the claims break §2.2-2.3 (naming the field);
2 on a usage error.
"""

from __future__ import annotations

import io
import json
import re
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click

from edge.credentials.errors import ClaimsError, TrustError
from edge.credentials.masking import mask_name
from edge.credentials.trust import Trust, load_trust
from edge.credentials.verifier import Verification
from edge.credentials.verifier import verify as verify_text

__all__ = ["mint", "parse_duration", "verify_command"]

_DURATION = re.compile(r"(\d+)\s*([smhdw]?)")
_UNIT_S = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_duration(text: str) -> int:
    """Seconds in ``90s``, ``30m``, ``72h``, ``7d``, ``2w`` or a bare number of seconds.

    Raises:
        ValueError: any other form, or zero.
    """
    m = _DURATION.fullmatch(text.strip().lower())
    if m is None or int(m.group(1)) <= 0:
        raise ValueError(f"not a duration: {text!r} (examples: 72h, 7d, 3600s)")
    return int(m.group(1)) * _UNIT_S[m.group(2)]


def _parse_at(text: str) -> datetime:
    try:
        dt = datetime.fromisoformat(text.strip().replace("z", "Z"))
    except ValueError:
        raise click.BadParameter(f"not an ISO 8601 time: {text!r} (e.g. 2022-05-10T08:00:00Z)") from None
    return dt if dt.tzinfo is not None else dt.replace(tzinfo=UTC)


def _trust_in_force(config_path: str | None) -> tuple[Trust, str]:
    """The trust part of the bundle in force, else an empty trust; and where it came from."""
    try:
        from edge.bundles.view import SQLiteBundle, read_pointer
        from edge.config import load_gate_config
        from edge.store.state import StateDB

        cfg = load_gate_config(config_path)
        if not (cfg.data_dir / "state.db").exists():
            return Trust.empty(), f"no gate state at {cfg.data_dir}"
        state = StateDB(cfg.data_dir, readonly=True)
        try:
            pointer = read_pointer(state)
        finally:
            state.close()
        if pointer is None:
            return Trust.empty(), "no bundle in force"
        with SQLiteBundle(cfg.data_dir / "bundles" / pointer.bundle_file, manifest_id=pointer.manifest_id) as b:
            trust = b.trust
        if not isinstance(trust, Trust):
            return Trust.empty(), "the bundle in force has no usable trust part"
        return trust, f"bundle version {pointer.version}"
    except Exception as exc:  # any failure here means "no usable bundle"; the note says why
        return Trust.empty(), f"bundle in force unreadable ({type(exc).__name__}: {str(exc)[:120]})"


def _decode_image(path: Path) -> list[str]:
    """Texts of the QR codes (and other barcodes) zxing-cpp finds in an image file."""
    import cv2
    import zxingcpp

    image = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if image is None:
        raise click.BadParameter(f"{path}: not an image OpenCV can read", param_hint="--image")
    texts: list[str] = []
    for result in zxingcpp.read_barcodes(image):
        text = getattr(result, "text", "")
        if text and getattr(result, "valid", True) and text not in texts:
            texts.append(text)
    return texts


def _show(index: int, total: int, result: Verification) -> None:
    """A human summary: masked names only, DCC as masked name + birth year (§7.3)."""
    head = f"[{index}/{total}] " if total > 1 else ""
    verdict = "有效 / VALID" if result.ok else "无效 / NOT VALID"
    click.echo(f"{head}{verdict}  kind={result.kind or '-'}  status={result.status}")
    marks = " ".join(f"{k}={'✓' if v else '✗' if v is False else '-'}" for k, v in result.checks.items())
    click.echo(f"  checks: {marks}")
    if result.error:
        click.echo(f"  error: {result.error}")
    claims = result.claims
    if not claims:
        return
    label = "claims" if result.ok else "claims (unverified / 未验证)"
    # The credential id never leaves the JSON form (§7.3); the revocation hash stands for it.
    shown: dict[str, Any] = {k: v for k, v in claims.items() if k not in ("dcc", "id")}
    dcc = claims.get("dcc")
    if isinstance(dcc, dict):
        nam_value = dcc.get("nam")
        nam: dict[str, Any] = nam_value if isinstance(nam_value, dict) else {}
        name = " ".join(str(nam.get(k, "")) for k in ("gnt", "fnt") if nam.get(k))
        shown["name"] = mask_name(name.replace("<", " "))
        dob = dcc.get("dob")
        shown["birth_year"] = dob[:4] if isinstance(dob, str) and dob else None
        entry = (dcc.get(claims.get("dcc_type", "")) or [{}])[0]
        if isinstance(entry, dict):
            shown.update({f"dcc.{k}": v for k, v in entry.items() if k != "ci"})
    click.echo(f"  {label}:")
    for k, v in shown.items():
        click.echo(f"    {k}: {json.dumps(v, ensure_ascii=False) if not isinstance(v, str) else v}")


@click.command("verify")
@click.argument("texts", nargs=-1, metavar="[TEXT]...")
@click.option("--json", "as_json", is_flag=True, help="Print the JSON object of credentials.md §3.1, one per line.")
@click.option("--trust", "trust_file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Trust file (credentials.md §4.1). Default: the trust of the bundle in force.")
@click.option("--at", "at_text", default=None, metavar="ISO8601",
              help="Check time, e.g. 2022-05-10T08:00:00Z (naive = UTC). Default: now.")
@click.option("--image", "image", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="Read the codes from an image file instead of TEXT.")
@click.option("--skew", "skew_s", type=click.IntRange(0, 3600), default=300, show_default=True,
              help="Clock skew tolerance in seconds for exp/nbf/iat.")
@click.option("--config", "config_path", type=click.Path(dir_okay=False), envvar="CHECKPOINT_CONFIG", default=None,
              help="gate.toml whose bundle in force gives the default trust (default: $CHECKPOINT_CONFIG).")
@click.pass_context
def verify_command(
    ctx: click.Context,
    texts: tuple[str, ...],
    as_json: bool,
    trust_file: Path | None,
    at_text: str | None,
    image: Path | None,
    skew_s: int,
    config_path: str | None,
) -> None:
    """Verify scanned codes offline (CK1, HC1) and print the checks.

    TEXT is the decoded QR text; '-' reads one text per line from stdin. Exit status:
    0 all valid, 1 some not valid, 2 usage error or no code in the image.
    """
    from datetime import timedelta

    if image is not None and texts:
        raise click.UsageError("give TEXT or --image, not both")
    if image is None and not texts:
        raise click.UsageError("give a TEXT, '-' for stdin, or --image FILE")
    at = _parse_at(at_text) if at_text else datetime.now(UTC)

    if trust_file is not None:
        try:
            trust = load_trust(trust_file)
        except TrustError as exc:
            raise click.BadParameter(str(exc), param_hint="--trust") from None
    else:
        trust, source = _trust_in_force(config_path)
        if not len(trust):
            click.echo(f"checkpoint verify: {source}: empty trust, every kid check is false", err=True)
    for warning in trust.warnings:
        click.echo(f"checkpoint verify: warning: {warning}", err=True)

    if image is not None:
        items = _decode_image(image)
        if not items:
            click.echo(f"checkpoint verify: no code found in {image}", err=True)
            ctx.exit(2)
    else:
        items = []
        for text in texts:
            if text == "-":
                items.extend(line.rstrip("\r\n") for line in sys.stdin if line.strip())
            else:
                items.append(text)
        if not items:
            raise click.UsageError("no text on stdin")

    results = [verify_text(text, trust, at, skew=timedelta(seconds=skew_s)) for text in items]
    for i, result in enumerate(results, 1):
        if as_json:
            click.echo(json.dumps(result.to_json(), ensure_ascii=False))
        else:
            _show(i, len(results), result)
    ctx.exit(0 if all(r.ok for r in results) else 1)


# The registry (edge/cli/__init__.py) names this command ``edge.credentials.cli:verify``.
verify = verify_command


def _write_qr(text: str, out: Path) -> str:
    """Write ``text`` as a PNG QR code: alphanumeric mode, ECC Q, else M (§2.4 rule 5)."""
    import segno
    from segno import DataOverflowError

    from sync.keys import atomic_write

    for level in ("q", "m"):
        try:
            qr = segno.make_qr(text, mode="alphanumeric", error=level, boost_error=False)
            break
        except DataOverflowError:
            continue
    else:
        raise click.ClickException("the credential is too long for a QR code")
    buf = io.BytesIO()
    qr.save(buf, kind="png", scale=6, border=4)
    atomic_write(out, buf.getvalue(), mode=0o644)
    return f"version {qr.version}, ECC {qr.error}"


@click.command("mint")
@click.option("--kind", type=click.Choice(["health", "pass", "venue", "material"]), required=True,
              help="Kind of credential (credentials.md §1.1).")
@click.option("--key", "key_path", type=click.Path(exists=True, dir_okay=False, path_type=Path), required=True,
              help="Issuer key file from 'checkpoint admin keygen --role issuer'.")
@click.option("--claims", "claims_path", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              required=True, help="JSON object with the claims under their long names (credentials.md §2.4).")
@click.option("--expires-in", "expires_in", default=None, metavar="DURATION",
              help="Lifetime from issue, e.g. 24h, 30d (default: the kind's lifetime; a pass: its claims).")
@click.option("--issued-at", "issued_at", default=None, metavar="ISO8601",
              help="Issue time (default: now). For test data and reissuing.")
@click.option("--qr", "qr_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write the QR code image (PNG) here.")
@click.pass_context
def mint(
    ctx: click.Context,
    kind: str,
    key_path: Path,
    claims_path: Path,
    expires_in: str | None,
    issued_at: str | None,
    qr_path: Path | None,
) -> None:
    """Issue a CK1 credential and print its QR text (exit 1 names a bad claim)."""
    from edge.credentials.mint import mint as mint_credential
    from sync.keys import load_key_file
    from sync.timefmt import to_ms

    try:
        expires_in_s = parse_duration(expires_in) if expires_in is not None else None
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--expires-in") from None
    now_ms = to_ms(_parse_at(issued_at) if issued_at else datetime.now(UTC))
    key = load_key_file(key_path, role="issuer")
    try:
        claims = json.loads(claims_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        click.echo(f"checkpoint admin mint: {claims_path}: not a JSON claims file: {exc}", err=True)
        ctx.exit(1)
    try:
        text = mint_credential(kind, claims, key, now_ms=now_ms, expires_in_s=expires_in_s)
    except ClaimsError as exc:
        click.echo(f"checkpoint admin mint: claims: {exc}", err=True)
        ctx.exit(1)
    result = verify_text(text, _key_trust(key), datetime.fromtimestamp(now_ms / 1000, UTC))
    claims_out = result.claims or {}
    click.echo(text)
    click.echo(
        f"minted {kind}: kid {key.keyid}  iat {claims_out.get('iat')}  exp {claims_out.get('exp')}  "
        f"revocation_hash {claims_out.get('revocation_hash')}  ({len(text)} characters)",
        err=True,
    )
    if qr_path is not None:
        click.echo(f"wrote {qr_path} (QR {_write_qr(text, qr_path)})", err=True)


def _key_trust(key: Any) -> Trust:
    from edge.credentials.mint import trust_for_key

    return trust_for_key(key)
