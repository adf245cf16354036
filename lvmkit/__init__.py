__version__ = "0.1.0"

# The one setting that names the project's public repository and branch. The book's buttons (_config.yml), the README's badges,
# pyproject's project URLs and every chapter's Colab install cell are derived from it by `python .ci/links.py --write`, and
# CI (`python .ci/links.py --check`) fails when one of them does not follow it.
REPOSITORY = "https://github.com/example-org/lvmkit"
BRANCH = "main"
# Where `lvmkit.pretrained` downloads released weights (override with LVMKIT_PRETRAINED_URL).
PRETRAINED_URL = f"{REPOSITORY}/releases/download/v{__version__}"
