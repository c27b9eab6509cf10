"""Read fall datasets in SisFall's layout and emulate a node's accelerometer from them.

SisFall (Sucerquia, López, Vargas-Bonilla, *Sensors* 2017, doi:10.3390/s17010198) unpacks to a
``SisFall_dataset/`` folder with one folder per subject (``SA01``..``SA23`` young adults,
``SE01``..``SE15`` elderly) holding one file per trial, ``<code>_<subject>_<take>.txt``, e.g.
``F05_SA01_R02.txt`` (fall type 5, second take). A file may also be compressed
(``.txt.gz``, ``.txt.xz``). Each line is one sample at 200 Hz, nine integer counts and a ``;``::

      17,-179, -26,  -40, 1206,  -254, 68,-712,-116;

Columns 1-3 are the waist-worn ADXL345 at +-16 g, 1 count = 1/256 g. That is the part a node
with a +-16 g accelerometer sees; :func:`read_counts` returns those columns and
:func:`resample` brings them to the node's sample rate in milli-g::

    for trial in iter_trials("/data/SisFall_dataset", subjects={"SA01"}):
        samples = resample(read_counts(trial.path), 50)   # [(x_mg, y_mg, z_mg), ...]

Known quirk of the distribution: ``SA15/`` holds files named ``D17_SE15_*``. The subject is
therefore always taken from the folder, never from the file name.

Other datasets converted to this layout (FallAllD: Saleh, Abbas, Le Bouquin Jeannès, *IEEE Sensors
Journal* 2021, doi:10.1109/JSEN.2020.3018335) use their own activity codes: an
``activity_codes.csv`` beside the subject folders (``code,src_activity_id,src_activity,is_fall,...``)
names them and says which are falls, and then wins over SisFall's table. A folder holding several
datasets (``SisFall_dataset/`` and ``FallAllD_dev/``) is read with :func:`find_datasets`::

    for ds in find_datasets("/data"):                       # SisFall_dataset, FallAllD_dev
        for trial in iter_trials(ds):
            trial.dataset, trial.code, trial.activity       # "FallAllD_dev", "D16", "Lying down"
"""

from __future__ import annotations

import csv
import gzip
import io
import logging
import lzma
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Mapping

log = logging.getLogger(__name__)

#: SisFall's sample rate.
SOURCE_RATE_HZ = 200
#: ADXL345 at +-16 g, full resolution: 256 counts per g (dataset Readme).
COUNTS_PER_G = 256
#: Node rates :func:`resample` supports: SOURCE_RATE_HZ must be a whole multiple of them.
RATES_HZ = (50, 100, 200)
#: Accelerometer ranges :func:`resample` emulates, in g (16: the ADXL345 columns as recorded).
RANGES_G = (2, 4, 8, 16)

_SUBJECT_RE = re.compile(r"S[AE]\d\d")
_TRIAL_RE = re.compile(r"(?P<code>[FD]\d\d)_(?P<subject>S[AE]\d\d)_(?P<take>R\d\d)\.txt(?P<comp>\.gz|\.xz)?")
_TRIAL_SUFFIXES = (".txt", ".txt.gz", ".txt.xz")
_FIELDS = 9
_ALLOWED = b"0123456789+-,; \t\r\n"
#: The file that names a converted dataset's activity codes (FallAllD_dev/activity_codes.csv).
CODES_FILE = "activity_codes.csv"
_CODE_RE = re.compile(r"[FD]\d\d")


class DatasetError(ValueError):
    """A dataset path that is not SisFall, or a trial file that does not parse."""


@dataclass(frozen=True, slots=True)
class Activity:
    """What a code stands for in one dataset: ``D16`` is "Lying down" in FallAllD."""

    code: str
    name: str
    is_fall: bool


#: SisFall's activities (its Readme.txt): 19 daily activities, 15 falls.
SISFALL_ACTIVITIES: Mapping[str, Activity] = {a.code: a for a in (Activity(c, n, c[0] == "F") for c, n in (
    ("D01", "Walking slowly"),
    ("D02", "Walking quickly"),
    ("D03", "Jogging slowly"),
    ("D04", "Jogging quickly"),
    ("D05", "Walking upstairs and downstairs slowly"),
    ("D06", "Walking upstairs and downstairs quickly"),
    ("D07", "Slowly sit in a half height chair, wait a moment, and up slowly"),
    ("D08", "Quickly sit in a half height chair, wait a moment, and up quickly"),
    ("D09", "Slowly sit in a low height chair, wait a moment, and up slowly"),
    ("D10", "Quickly sit in a low height chair, wait a moment, and up quickly"),
    ("D11", "Sitting a moment, trying to get up, and collapse into a chair"),
    ("D12", "Sitting a moment, lying slowly, wait a moment, and sit again"),
    ("D13", "Sitting a moment, lying quickly, wait a moment, and sit again"),
    ("D14", "Being on one's back change to lateral position, wait a moment, and change to one's back"),
    ("D15", "Standing, slowly bending at knees, and getting up"),
    ("D16", "Standing, slowly bending without bending knees, and getting up"),
    ("D17", "Standing, get into a car, remain seated and get out of the car"),
    ("D18", "Stumble while walking"),
    ("D19", "Gently jump without falling (trying to reach a high object)"),
    ("F01", "Fall forward while walking caused by a slip"),
    ("F02", "Fall backward while walking caused by a slip"),
    ("F03", "Lateral fall while walking caused by a slip"),
    ("F04", "Fall forward while walking caused by a trip"),
    ("F05", "Fall forward while jogging caused by a trip"),
    ("F06", "Vertical fall while walking caused by fainting"),
    ("F07", "Fall while walking, with use of hands in a table to dampen fall, caused by fainting"),
    ("F08", "Fall forward when trying to get up"),
    ("F09", "Lateral fall when trying to get up"),
    ("F10", "Fall forward when trying to sit down"),
    ("F11", "Fall backward when trying to sit down"),
    ("F12", "Lateral fall when trying to sit down"),
    ("F13", "Fall forward while sitting, caused by fainting or falling asleep"),
    ("F14", "Fall backward while sitting, caused by fainting or falling asleep"),
    ("F15", "Lateral fall while sitting, caused by fainting or falling asleep"),
))}


@dataclass(frozen=True, slots=True)
class Dataset:
    """One folder of subject folders, and what its activity codes mean."""

    name: str                              # the folder's name: "SisFall_dataset", "FallAllD_dev"
    root: Path
    activities: Mapping[str, Activity]
    codes_from: str                        # "SisFall" or the path of its activity_codes.csv

    def activity(self, code: str) -> Activity:
        """The code's activity; a code the table does not know is a fall when it starts with F."""
        return self.activities.get(code) or Activity(code, "", code.startswith("F"))


@dataclass(frozen=True, slots=True)
class Trial:
    """One recorded trial: ``F05_SA01_R02`` is subject SA01's second take of fall type F05."""

    subject: str      # from the folder: "SA01"
    code: str         # activity: in SisFall "F01".."F15" falls, "D01".."D19" activities of daily living
    take: str         # "R01"
    path: Path
    group: str        # "young" (SA..) or "elderly" (SE..)
    is_fall: bool
    dataset: str = ""      # the dataset's folder name: "SisFall_dataset", "FallAllD_dev"
    activity: str = ""     # the code's name in that dataset: "Lying down"

    @property
    def name(self) -> str:
        """``F05_SA01_R02`` (with the subject of the folder)."""
        return f"{self.code}_{self.subject}_{self.take}"


def dataset_root(root: str | Path) -> Path:
    """The folder holding the subject folders: *root* itself or its ``SisFall_dataset/``.

    Raises :class:`DatasetError` (a ``ValueError``) naming the path when neither holds any.
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: no such directory")
    for candidate in (root, root / "SisFall_dataset"):
        if candidate.is_dir() and any(_is_subject_dir(p) for p in candidate.iterdir()):
            return candidate
    raise DatasetError(f"{root}: not a SisFall dataset (no subject folders like SA01/ or SE01/ in it "
                       f"or in {root / 'SisFall_dataset'})")


def read_activity_codes(path: Path) -> dict[str, Activity]:
    """A converted dataset's ``activity_codes.csv``: ``code,src_activity_id,src_activity,is_fall,...``.

    Raises :class:`DatasetError` naming the file and line for a row that is not a code
    (``F01``/``D13``), a name and ``is_fall`` 0 or 1, or for a code given twice.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{path}: cannot read: {exc}") from exc
    rows = csv.DictReader(io.StringIO(text))
    missing = {"code", "src_activity", "is_fall"} - set(rows.fieldnames or ())
    if missing:
        raise DatasetError(f"{path}:1: expected the columns code, src_activity, is_fall; missing "
                           + ", ".join(sorted(missing)))
    out: dict[str, Activity] = {}
    for row in rows:
        line = rows.line_num
        code, name, fall = row["code"], (row["src_activity"] or "").strip(), row["is_fall"]
        if code is None or not _CODE_RE.fullmatch(code) or fall not in ("0", "1") or not name:
            raise DatasetError(f"{path}:{line}: expected a code like F01 or D13, a name and is_fall 0 or 1, "
                               f"got {code!r}, {name!r}, {fall!r}")
        if code in out:
            raise DatasetError(f"{path}:{line}: code {code} given twice")
        out[code] = Activity(code, name, fall == "1")
    return out


def open_dataset(root: str | Path) -> Dataset:
    """The dataset at *root* (its subject folders, or a ``SisFall_dataset/`` in it), with its codes
    named by its ``activity_codes.csv`` or, without one, by SisFall's table."""
    base = dataset_root(root)
    codes = base / CODES_FILE
    if codes.is_file():
        return Dataset(base.name, base, read_activity_codes(codes), str(codes))
    return Dataset(base.name, base, SISFALL_ACTIVITIES, "SisFall")


def find_datasets(path: str | Path) -> list[Dataset]:
    """The dataset at *path*, or every dataset folder directly in it (sorted by name).

    ``/data/SisFall_dataset`` is one dataset; ``/data`` holding ``SisFall_dataset/`` and
    ``FallAllD_dev/`` is both. Raises :class:`DatasetError` when there is none.
    """
    path = Path(path)
    if not path.is_dir():
        raise DatasetError(f"{path}: no such directory")
    if any(_is_subject_dir(p) for p in path.iterdir()):
        return [open_dataset(path)]
    found = [open_dataset(p) for p in sorted(path.iterdir())
             if p.is_dir() and any(_is_subject_dir(q) for q in p.iterdir())]
    if not found:
        raise DatasetError(f"{path}: not a SisFall dataset (no subject folders like SA01/ or SE01/ in it "
                           f"or in the folders in it)")
    return found


def _is_subject_dir(path: Path) -> bool:
    return path.is_dir() and _SUBJECT_RE.fullmatch(path.name) is not None


def parse_subjects(text: str) -> frozenset[str]:
    """``"SA01,SA03"``, ``"SA01-SA05"`` or both mixed (``"SA01-SA03,SE02"``) -> a set of subjects."""
    subjects: set[str] = set()
    for part in filter(None, (p.strip().upper() for p in text.split(","))):
        first, sep, last = part.partition("-")
        if not _SUBJECT_RE.fullmatch(first) or (sep and not _SUBJECT_RE.fullmatch(last)):
            raise ValueError(f"bad subject {part!r}: expected e.g. SA01 or SA01-SA05")
        if not sep:
            subjects.add(first)
            continue
        if first[:2] != last[:2] or int(first[2:]) > int(last[2:]):
            raise ValueError(f"bad subject range {part!r}: expected e.g. SA01-SA05")
        subjects.update(f"{first[:2]}{n:02d}" for n in range(int(first[2:]), int(last[2:]) + 1))
    if not subjects:
        raise ValueError("no subjects given")
    return frozenset(subjects)


def iter_trials(root: str | Path | Dataset, subjects: Iterable[str] | None = None, *,
                skipped: list[Path] | None = None) -> Iterator[Trial]:
    """The trials under *root*, sorted by (subject, code, take).

    *root* is a :class:`Dataset`, the ``SisFall_dataset`` folder or its parent; each trial is
    named by the dataset's activities (:func:`open_dataset`). *subjects* selects subject folders
    (all when None). Files other than ``.txt``/``.txt.gz``/``.txt.xz`` are ignored (``Readme.txt``
    sits at the top, outside the subject folders). A trial-like file whose name does not parse,
    or a second copy of a trial (``.txt`` beside ``.txt.xz``), is skipped with a logged warning
    and appended to *skipped* when given.
    """
    ds = root if isinstance(root, Dataset) else open_dataset(root)
    base = ds.root
    wanted = None if subjects is None else {s.upper() for s in subjects}
    found: dict[tuple[str, str, str], Trial] = {}
    for folder in sorted(p for p in base.iterdir() if _is_subject_dir(p)):
        if wanted is not None and folder.name not in wanted:
            continue
        for path in sorted(folder.iterdir()):
            if not path.is_file() or not path.name.lower().endswith(_TRIAL_SUFFIXES):
                continue
            match = _TRIAL_RE.fullmatch(path.name)
            key = (folder.name, match["code"], match["take"]) if match else None
            if key is None or key in found:
                why = "a second copy of this trial" if match else "not a <code>_<subject>_<take>.txt name"
                log.warning("skipping %s: %s", path, why)
                if skipped is not None:
                    skipped.append(path)
                continue
            subject, code, take = key
            activity = ds.activity(code)
            found[key] = Trial(subject=subject, code=code, take=take, path=path,
                               group="young" if subject.startswith("SA") else "elderly",
                               is_fall=activity.is_fall, dataset=ds.name, activity=activity.name)
    for key in sorted(found):
        yield found[key]


def _read_bytes(path: Path) -> bytes:
    name = path.name.lower()
    try:
        if name.endswith(".xz"):
            return lzma.decompress(path.read_bytes())
        if name.endswith(".gz"):
            return gzip.decompress(path.read_bytes())
        return path.read_bytes()
    except (lzma.LZMAError, gzip.BadGzipFile, EOFError) as exc:   # corrupt or truncated
        raise DatasetError(f"{path}: cannot decompress: {exc}") from exc


def read_counts(path: str | Path) -> list[tuple[int, int, int]]:
    """The ADXL345 columns (1-3) of a trial file as ``(x, y, z)`` counts, 1 count = 1/256 g.

    Lines end with ``;`` and CRLF and pad their columns with spaces; blank lines at the end are
    allowed. A line that is not nine comma-separated integers ending with ``;`` raises
    :class:`DatasetError` (a ``ValueError``) naming the file and the 1-based line number.
    """
    path = Path(path)
    data = _read_bytes(path)
    # One pass in C over the whole file for stray characters; the loop below then only has to
    # check each line's shape and convert the three columns it keeps.
    stray = bool(data.translate(None, _ALLOWED))
    lines = data.split(b"\n")
    while lines and not lines[-1].strip():
        lines.pop()
    out = []
    append = out.append
    for number, line in enumerate(lines, 1):
        fields = line.rstrip().split(b",")   # rstrip: the CR of CRLF
        try:
            if len(fields) != _FIELDS or not fields[-1].endswith(b";") or (
                    stray and line.translate(None, _ALLOWED)):
                raise ValueError
            append((int(fields[0]), int(fields[1]), int(fields[2])))
        except ValueError:
            text = line.strip().decode("ascii", "replace")[:80]
            raise DatasetError(f"{path}:{number}: expected 9 comma-separated integers ending with ';', "
                               f"got {text!r}") from None
    return out


def counts_to_mg(count_sum: int, n: int = 1) -> int:
    """The mean of *n* samples whose counts add up to *count_sum*, in milli-g, rounded half up.

    ``round(count_sum * 1000 / (256 * n))`` in integers: one count is 3.90625 mg, so a single
    count never errs by more than 0.5 mg (truncating ``count * 1000 // 256`` would bias every
    sample down by up to 1 mg).
    """
    den = COUNTS_PER_G * n
    return (2000 * count_sum + den) // (2 * den)


def resample(counts: list[tuple[int, int, int]], rate_hz: int, range_g: int = 16) -> list[tuple[int, int, int]]:
    """200 Hz ADXL345 counts -> ``(x_mg, y_mg, z_mg)`` at *rate_hz* (50, 100 or 200).

    *range_g* below 16 emulates a part with a smaller range (``8``: a +-8 g accelerometer, like
    FallAllD's): each axis is clipped to +-range_g before the averaging, as the part's converter
    clips before its output filter.

    Each output sample is the mean of one block of ``200 // rate_hz`` input samples (4 at
    50 Hz), in milli-g rounded half up (:func:`counts_to_mg`); an incomplete last block is
    dropped.

    Why a block mean and not plain decimation (keeping every 4th sample): an accelerometer
    running at 50 Hz low-pass filters its signal to its output data rate before it is read,
    so each reading is close to an average over its period, and a box filter is the simplest
    such low-pass. Decimation would alias (the harmonics of walking and running fold down)
    and would read a fall's impact at full height or miss it entirely depending on which 5 ms
    sample it lands on: impacts last 10-50 ms. The block mean keeps every impact's area, so
    an impact is never lost, and lowers short peaks as a real 50 Hz node would: a 10 ms,
    12 g spike reads 3.75-6.5 g at 50 Hz depending on where the block boundary falls.
    """
    if rate_hz not in RATES_HZ:
        raise ValueError(f"rate {rate_hz} Hz: supported node rates are {', '.join(map(str, RATES_HZ))} Hz")
    k = SOURCE_RATE_HZ // rate_hz
    den = 2 * COUNTS_PER_G * k                # counts_to_mg(sum, k), inlined: ~1M samples a run
    half = COUNTS_PER_G * k
    if range_g not in RANGES_G:
        raise ValueError(f"range +-{range_g} g: supported ranges are {', '.join(map(str, RANGES_G))} g")
    if not counts:
        return []
    if range_g < 16:
        lim = range_g * COUNTS_PER_G
        counts = [(min(lim, max(-lim, x)), min(lim, max(-lim, y)), min(lim, max(-lim, z))) for x, y, z in counts]
    columns = zip(*counts)                    # xs, ys, zs
    # zip(*[iter(col)] * k) walks a column k samples at a time and drops an incomplete block
    sx, sy, sz = (map(sum, zip(*[iter(col)] * k)) for col in columns)
    return [((2000 * x + half) // den, (2000 * y + half) // den, (2000 * z + half) // den)
            for x, y, z in zip(sx, sy, sz)]
