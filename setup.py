"""Build steps: the translation catalogs (`.po`) are compiled into `.mo` files with Babel, and the
repository's top-level `migrations/` is shipped inside the package.

Everything else about the package is in pyproject.toml. A wheel gets the `.mo` files in its
build folder; an editable install (`pip install -e .`, as `make` does) gets them beside the `.po`
files. A catalog that does not compile fails the build. A wheel carries the migrations as
`referral_service/migrations/` (so `referral-service db upgrade` works from any folder); an
editable install reads them where they are (see domain/health.py).
"""

import shutil
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

CATALOGS = "referral_service/translations"
MIGRATIONS = "migrations"


class BuildWithCatalogs(build_py):
    """`build_py`, then every `translations/<lang>/LC_MESSAGES/messages.po` compiled beside it,
    and (for a wheel) `migrations/` copied into the package."""

    def run(self):
        super().run()
        if not self.editable_mode:
            shutil.copytree(
                MIGRATIONS,
                Path(self.build_lib) / "referral_service" / "migrations",
                ignore=shutil.ignore_patterns("__pycache__", "*.pyc"),
                dirs_exist_ok=True,
            )
        from babel.messages.mofile import write_mo
        from babel.messages.pofile import read_po

        for po in sorted(Path(CATALOGS).glob("*/LC_MESSAGES/messages.po")):
            mo = po.with_suffix(".mo")
            if not self.editable_mode:
                mo = Path(self.build_lib) / mo
            mo.parent.mkdir(parents=True, exist_ok=True)
            with open(po, "rb") as source:
                catalog = read_po(source, locale=po.parts[-3], abort_invalid=True)
            with open(mo, "wb") as target:
                write_mo(target, catalog)


setup(cmdclass={"build_py": BuildWithCatalogs})
