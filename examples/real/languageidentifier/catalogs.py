"""Program messages in 20 languages, from the gettext catalogs (``*.mo``) that the system's packages install.

Every catalog family (a "domain": coreutils, apt, glib20, ...) holds the same messages translated into many languages;
a language's label is its locale folder (Norwegian: ``nb``). Families are split by a hash of their name, so the
messages of one program are either all for fine-tuning or all for testing: a test message's program was never seen.
English is the messages' own source text (msgid). Only messages of at least ``window`` characters are kept, cut to it.
"""

from __future__ import annotations

import gettext
import zlib
from pathlib import Path

LOCALE = Path("/usr/share/locale")
FOLDERS = {"no": "nb"}  # the model's label -> the locale folder that holds it
PER_LANGUAGE = {"finetune": 2000, "test": 150}


def _split_of(domain: str) -> str:
    return "test" if zlib.crc32(domain.encode()) % 3 == 0 else "finetune"


def _catalog(path: Path) -> dict[str, str]:
    """msgid -> msgstr of one catalog (plural forms left out); a catalog in a legacy charset is skipped."""
    try:
        with path.open("rb") as handle:
            catalog = gettext.GNUTranslations(handle)._catalog
    except (UnicodeDecodeError, OSError):
        return {}
    return {k: v for k, v in catalog.items() if isinstance(k, str) and k and isinstance(v, str)}


def messages(split: str, languages: list[str], window: int, locale: Path = LOCALE) -> tuple[list[str], list[str]]:
    """Up to PER_LANGUAGE[split] messages per language (texts, their languages), in a fixed order."""
    texts, labels = [], []
    english: list[str] = []
    for language in languages:
        if language == "en":
            continue
        folder = locale / FOLDERS.get(language, language) / "LC_MESSAGES"
        found: list[str] = []
        for path in sorted(folder.glob("*.mo")):
            if _split_of(path.stem) != split:
                continue
            for source, translated in sorted(_catalog(path).items()):
                text, original = " ".join(translated.split()), " ".join(source.split())
                if len(text) >= window and text != original:
                    found.append(text[:window])
                if len(original) >= window and "\x00" not in original:
                    english.append(original[:window])
        chosen = list(dict.fromkeys(found))[:PER_LANGUAGE[split]]
        texts += chosen
        labels += [language] * len(chosen)
    if "en" in languages:
        chosen = list(dict.fromkeys(english))[:PER_LANGUAGE[split]]
        texts += chosen
        labels += ["en"] * len(chosen)
    return texts, labels
