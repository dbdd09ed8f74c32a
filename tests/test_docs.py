"""README.md and docs/*.md against the repository: every relative link and
image points at a file that exists, every ``#anchor`` into a Markdown file is
one of its headings (GitHub's slugs), every ``configs/``, ``tools/`` or
``docs/`` file that a code block or code span names exists, and every image is
a PNG that is not blank. Fast: no model is built.
"""
import re
from pathlib import Path
from typing import Dict, List, Set, Tuple

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / 'README.md'] + sorted((ROOT / 'docs').glob('*.md'))
PAGE_IDS = [str(page.relative_to(ROOT)) for page in PAGES]

FENCE = re.compile(r'^(```|~~~).*?^\1[ \t]*$', re.M | re.S)
CODE_SPAN = re.compile(r'(`+)(.+?)\1', re.S)
# [text](target) and ![alt](target); the target up to a space or ')'
LINK = re.compile(r'(!?)\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*<?([^)\s>]+)>?'
                  r'(?:\s+"[^"]*")?\s*\)')
HEADING = re.compile(r'^(#{1,6})[ \t]+(.+?)[ \t]*#*[ \t]*$', re.M)
# a repository file named in code: configs/..., tools/..., docs/...
REPO_PATH = re.compile(r'(?<![\w/$.~-])((?:configs|tools|docs)/[\w./+-]*'
                       r'\.(?:py|sh|md|png))(?![\w/{*])')
WRITTEN = re.compile(r'>\s*(\S+)')  # `cat > FILE`: made by the block itself


def _text(page: Path) -> str:
    return page.read_text(encoding='utf-8')


def _prose(text: str) -> str:
    """The text outside fenced code blocks and code spans."""
    text = FENCE.sub('', text)
    return CODE_SPAN.sub('', text)


def _code(text: str) -> List[str]:
    """Fenced code blocks and code spans, each as one string."""
    blocks = [m.group(0) for m in FENCE.finditer(text)]
    spans = [m.group(2) for m in CODE_SPAN.finditer(FENCE.sub('', text))]
    return blocks + spans


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: markup dropped, lower case, every
    character but letters, digits, spaces, '-' and '_' removed, spaces to
    '-'."""
    text = re.sub(r'!?\[([^\]]*)\]\([^)]*\)', r'\1', heading)  # links
    text = text.replace('`', '').strip().lower()
    text = re.sub(r'[^\w\- ]', '', text)
    return text.replace(' ', '-')


def anchors(page: Path) -> Set[str]:
    """Every anchor of a Markdown file; repeated headings get -1, -2..."""
    seen: Dict[str, int] = {}
    result = set()
    for match in HEADING.finditer(FENCE.sub('', _text(page))):
        base = slug(match.group(2))
        count = seen.get(base, 0)
        seen[base] = count + 1
        result.add(base if count == 0 else f'{base}-{count}')
    return result


def links(page: Path) -> List[Tuple[bool, str]]:
    """(is an image, target) of every relative link of a page."""
    found = []
    for match in LINK.finditer(_prose(_text(page))):
        target = match.group(2)
        if re.match(r'^[a-z][a-z0-9+.-]*:', target):  # http:, mailto: ...
            continue
        found.append((match.group(1) == '!', target))
    return found


def test_slug_follows_github():
    assert slug("OpenAI's DALL-E encoder (`encoder.pkl`)") == \
        'openais-dall-e-encoder-encoderpkl'
    assert slug('The `BEiT` backbone') == 'the-beit-backbone'
    assert slug('BEiT v2, ViT-B/16, on one node of 8 GPUs') == \
        'beit-v2-vit-b16-on-one-node-of-8-gpus'


def test_every_page_is_found():
    names = {page.name for page in PAGES}
    assert {'README.md', 'results.md', 'benchmarks.md'} <= names


@pytest.mark.parametrize('page', PAGES, ids=PAGE_IDS)
def test_links_and_anchors_resolve(page):
    problems = []
    for _, target in links(page):
        path, _, anchor = target.partition('#')
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            problems.append(f'{target}: no file {dest}')
            continue
        if anchor and dest.suffix == '.md' and anchor not in anchors(dest):
            problems.append(f'{target}: no heading with the anchor #{anchor} '
                            f'in {dest.relative_to(ROOT)}')
    assert not problems, f'{page.name}: ' + '; '.join(problems)


@pytest.mark.parametrize('page', PAGES, ids=PAGE_IDS)
def test_files_named_in_code_exist(page):
    missing = []
    for code in _code(_text(page)):
        written = {m.group(1) for m in WRITTEN.finditer(code)}
        for token in re.split(r'[\s\'"=(),;]+', code):
            if '{' in token or '*' in token or token in written:
                continue
            for match in REPO_PATH.finditer(token):
                name = match.group(1)
                if name not in written and not (ROOT / name).exists():
                    missing.append(name)
    assert not missing, f'{page.name} names files that do not exist: ' + \
        ', '.join(sorted(set(missing)))


@pytest.mark.parametrize('page', PAGES, ids=PAGE_IDS)
def test_images_are_pngs_with_content(page):
    for is_image, target in links(page):
        if not is_image:
            continue
        path = (page.parent / target.partition('#')[0]).resolve()
        assert path.is_file(), f'{page.name}: image {target} is missing'
        with Image.open(path) as image:
            assert image.format == 'PNG', f'{target} is {image.format}'
            pixels = np.asarray(image.convert('RGB'), dtype=np.float32)
        assert pixels.size and pixels.std() > 0, f'{target} is blank'


def test_readme_shows_one_figure_per_picture_tool():
    images = [target for is_image, target in links(ROOT / 'README.md')
              if is_image]
    assert len(images) >= 4, images
    assert all(target.startswith('docs/figures/') for target in images)
