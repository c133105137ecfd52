"""SKAB (Skoltech Anomaly Benchmark): the corpus, pinned, and its own scoring.

Issue #20, part anom-real. SKAB v0.9 (github.com/waico/SKAB, GPL-3.0): 34 labelled
recordings of a water-circulation testbed (pump, valves, loop) at 1 Hz, 8 sensors each
(vibration x2, motor current and voltage, loop pressure, motor and fluid temperature,
flow), one anomaly per recording (closed valves, leaks, rotor imbalance, water added).
The data stay out of this repository (GPL-3.0 data next to this project's code would
put the project under its terms): ``download`` fetches the pinned commit's files and
checks each against its SHA-256 below; ``load`` refuses files that do not match.

The scoring is a port of SKAB's ``core/metrics.py`` (``chp_score``), the version its
leaderboard uses: pointwise F1 / FAR / MAR on the ``anomaly`` column ("outlier
detection") and the NAB score on the ``changepoint`` column with 60 s windows to the
right of each changepoint ("changepoint detection"). Alarms become changepoints the way
SKAB's notebooks do it: ``rolling(30).max().diff().abs()``.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

SKAB_REPO = "waico/SKAB"
SKAB_COMMIT = "b2c0d46c2971dcbfe71e26087b6d231998bb91c2"  # 2024-08-11, SKAB v0.9 data
SKAB_LICENSE = "GPL-3.0"
CHANNELS = (
    "Accelerometer1RMS",
    "Accelerometer2RMS",
    "Current",
    "Pressure",
    "Temperature",
    "Thermocouple",
    "Voltage",
    "Volume Flow RateRMS",
)
TRAIN_ROWS = 400  # SKAB's own split: each recording's first 400 rows fit, the rest scored
NAB_WINDOW_S = 60.0
CP_ROLLING = 30

# data/<path> at SKAB_COMMIT -> SHA-256 (the 34 recordings with an anomaly)
MANIFEST: dict[str, str] = {
    "other/1.csv": "3beaf861bdfe9b4f4eff8e7567c1dd3f506fbd0ce667fc9399d04bd2dc70623d",
    "other/2.csv": "951c326bf36366fa7615b8f28d22f80b3878036069a690f42b3e223737a6a8d1",
    "other/3.csv": "f3c19a89f74f62a475c246b9263f161f7a734dd88304de803939cebaa55c7ebd",
    "other/4.csv": "56ca23f4eb61d1347d079eb9a35c60a59b8b64e160c00dd0c2ec69e0df0b2a4b",
    "other/5.csv": "7347b326df3a92c0810c69add0e5621939af7a1c1cb4755081d088e72d36920f",
    "other/6.csv": "eb8f05622a62c855040ea358b87be35fb1a4a3720ba0610569bab384db4b6e04",
    "other/7.csv": "1bee14f49bfc817ba2c335fb427baa71153d8f8ab52e72652f15f74e4b77daec",
    "other/8.csv": "12c138ed99c198e0a7ece886fe01bfd16bbdde206fad6c5d74322b6b9d6488d0",
    "other/9.csv": "11c4514b0bc706acff637fea6707ad9258ac878fe9dff3d0b11d2b618d94d8ea",
    "other/10.csv": "72683644f6f17689f619076a66a9ec02cbc0502bd669924c4c33951d1bdad9b0",
    "other/11.csv": "98a2fff3b6516205ae2e12f2dd30d7f08465fe4321a1bd5cf823396985ecb37b",
    "other/12.csv": "b0882efbcf2669223ae78bee61c9f10074a9b2375f0e86b8957ae5ce4aad1e72",
    "other/13.csv": "b3f1da02064d11234836a9fa1a2536bb0d3b6c6998ab60b0b71869b98e94d860",
    "other/14.csv": "c7f361e55397cc9efd4a76b6876111eda79b650d10aeb007342ca5972152eaef",
    "valve1/0.csv": "16af3f71313a23dd33d9b7b8065d836d05c3f9257588881cc7fbe07c076d9dc8",
    "valve1/1.csv": "fe4493bf805baef4e6dfb864094275d8cc2ea80a16b3735e2752b18b6aefd812",
    "valve1/2.csv": "90492413469261886c8896c327241448df5da73fd7739cabfec8dd82de3c0ce4",
    "valve1/3.csv": "cb6afea108eddfd8447307e405f86bbb764b8d8e9130d7849a46e1303e19b8b2",
    "valve1/4.csv": "983aed9dc09991a57911091373c580e1b86d06aa983cd51678f108fd8d709654",
    "valve1/5.csv": "78974991ec87b7f9b9b6b2944f4b525468a9beb36c59b06cd7650d9a15eca14a",
    "valve1/6.csv": "97469c0e0c9c0e0ee5d30794f1f36c6785df5816a112a8b16c59637e8c894685",
    "valve1/7.csv": "ca2c9c6d6fa302c642acec6fbedac495bd12fececeee0a755d45a54e340e0f30",
    "valve1/8.csv": "0c4afb92248b5b35b4c9d734a91ed8318346901f04579074903730569e60416c",
    "valve1/9.csv": "2aa1ae1b2ff505caecda24802b877dc686924bbbeeb7e7db4faa261efb5ed5bd",
    "valve1/10.csv": "ee16be8e4b870c779491e3d1dc9e0ecbfaf29eb013e032abff7a33f2cbbfe2ad",
    "valve1/11.csv": "89660fae4ed5c918db014409bbbc29f498fd99c7e956fab2620d18dea700a973",
    "valve1/12.csv": "90adfa9bc86d4556e6a4ce734436fd5685af79c189cd9828f8df75a7f468ce07",
    "valve1/13.csv": "d6cb6a97437215d3066a87e1fcc5fa4e68017629c043c5315920e3cf1060841c",
    "valve1/14.csv": "5f0bb9bc33c5e6c259263e32e25915c4d24c82b0a94554d48808626da05c1d71",
    "valve1/15.csv": "75cc86ab25d7091eee024739fa06d048753480d5d7d1507077231cab4f1b7a7e",
    "valve2/0.csv": "a6670e7a68c7c6ba62c649bd9d350633e80db624578e9529f2b736ced5e32bde",
    "valve2/1.csv": "b35d27f664eb0851ab73e5eb06633404c7eeaf532edff7e40c68eb9379f2012b",
    "valve2/2.csv": "2c3005cf28b88db715b7f4694e826ff252cba4dbb1eba679b040961f80477e60",
    "valve2/3.csv": "86927555d5c523e587d41500bd5dee4e2468289ec1b988ac17755aeae697d7f8",
}
DEV_BEFORE = np.datetime64("2020-03-05")  # recordings before this develop; later ones are held out


class CorpusError(ValueError):
    """The corpus directory is missing files or holds files other than the pinned ones."""


@dataclass
class Recording:
    """One SKAB recording: its path under data/, times (s), sensors, labels."""

    name: str
    t_s: np.ndarray
    x: np.ndarray  # (rows, channels)
    anomaly: np.ndarray  # bool per row
    changepoint: np.ndarray  # bool per row

    @property
    def start(self) -> np.datetime64:
        return np.datetime64(int(self.t_s[0]), "s")

    @property
    def held_out(self) -> bool:
        return bool(self.start >= DEV_BEFORE)


SKAB_URL = f"https://raw.githubusercontent.com/{SKAB_REPO}/{SKAB_COMMIT}/data"


def download(dest: Path, base_url: str = SKAB_URL, timeout_s: float = 60.0) -> list[Path]:
    """Fetch the pinned SKAB recordings into ``dest`` (data/ layout), checking each; a
    file whose checksum differs is refused and not written."""
    import httpx  # only this command needs the network

    out = []
    with httpx.Client(timeout=timeout_s, follow_redirects=True) as client:
        for rel, sha in MANIFEST.items():
            path = dest / rel
            if path.exists() and _sha256(path) == sha:
                out.append(path)
                continue
            url = f"{base_url}/{rel}"
            body = client.get(url).raise_for_status().content
            if hashlib.sha256(body).hexdigest() != sha:
                raise CorpusError(f"{url}: checksum mismatch")
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(body)
            out.append(path)
    return out


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def corpus_files(corpus: Path, verify: bool = True) -> list[Path]:
    """The recordings under ``corpus`` (SKAB's data/ folder or a checkout holding it).

    With ``verify`` every pinned file must be there and match its checksum; without it
    (a corpus in SKAB's format other than the pinned one, e.g. a test's) every
    ``*/*.csv`` but ``anomaly-free`` is taken.
    """
    root = corpus / "data" if (corpus / "data").is_dir() else corpus
    if not root.is_dir():
        raise CorpusError(f"{corpus}: no such directory")
    if not verify:
        files = sorted(p for p in root.glob("*/*.csv") if p.parent.name != "anomaly-free")
        if not files:
            raise CorpusError(f"{root}: no */*.csv recordings")
        return files
    files = []
    for rel, sha in MANIFEST.items():
        path = root / rel
        if not path.is_file():
            raise CorpusError(f"{path}: missing (run with --download, or see docs/anomaly.md)")
        if _sha256(path) != sha:
            raise CorpusError(f"{path}: not the pinned SKAB file (checksum differs)")
        files.append(path)
    return files


def load(path: Path, root: Path | None = None) -> Recording:
    f = pl.read_csv(path, separator=";", infer_schema_length=0)
    missing = [c for c in ("datetime", *CHANNELS, "anomaly", "changepoint") if c not in f.columns]
    if missing:
        raise CorpusError(f"{path}: not a SKAB recording (no columns {missing})")
    t = f["datetime"].str.to_datetime("%Y-%m-%d %H:%M:%S", time_unit="ms").dt.epoch("s")
    x = f.select(pl.col(list(CHANNELS)).cast(pl.Float64)).to_numpy()
    name = str(path.relative_to(root)) if root is not None else path.name
    return Recording(
        name=name,
        t_s=t.to_numpy().astype(np.float64),
        x=x,
        anomaly=f["anomaly"].cast(pl.Float64).to_numpy() == 1.0,
        changepoint=f["changepoint"].cast(pl.Float64).to_numpy() == 1.0,
    )


def load_corpus(corpus: Path, verify: bool = True) -> list[Recording]:
    files = corpus_files(corpus, verify)
    root = files[0].parent.parent
    return [load(p, root) for p in files]


# --- SKAB's scoring (core/metrics.py), ported to numpy ---------------------------------


def alarms_to_changepoints(alarm: np.ndarray) -> np.ndarray:
    """SKAB's notebooks: ``pred.rolling(30).max().fillna(0).diff().abs()``, first = pred[0]."""
    a = alarm.astype(np.float64)
    n = len(a)
    r = np.zeros(n)
    if n >= CP_ROLLING:
        win = np.lib.stride_tricks.sliding_window_view(a, CP_ROLLING).max(axis=1)
        r[CP_ROLLING - 1 :] = win
    cp = np.abs(np.diff(r, prepend=r[0]))
    cp[0] = a[0] if n else 0.0
    return cp == 1.0


@dataclass
class Confusion:
    tp: int = 0
    tn: int = 0
    fp: int = 0
    fn: int = 0

    def add(self, true: np.ndarray, pred: np.ndarray) -> None:
        self.tp += int(np.sum(true & pred))
        self.tn += int(np.sum(~true & ~pred))
        self.fp += int(np.sum(~true & pred))
        self.fn += int(np.sum(true & ~pred))

    def f1(self) -> float:
        d = self.tp + (self.fn + self.fp) / 2
        return self.tp / d if d else 0.0

    def far_pct(self) -> float:
        d = self.fp + self.tn
        return 100.0 * self.fp / d if d else 0.0

    def mar_pct(self) -> float:
        d = self.fn + self.tp
        return 100.0 * self.fn / d if d else 0.0


# (A_tp, A_fp, A_fn) per NAB profile, SKAB's table_of_coef
NAB_PROFILES = {
    "Standard": (1.0, -0.11, -1.0),
    "LowFP": (1.0, -0.22, -1.0),
    "LowFN": (1.0, -0.11, -2.0),
}
_X = np.linspace(-math.pi / 2, math.pi / 2, 1000)


@dataclass
class Nab:
    """Sums over recordings: score, null and perfect per profile; missed CPs and FPs."""

    score: np.ndarray
    null: np.ndarray
    perfect: np.ndarray
    missed: int = 0
    false_pos: int = 0

    @classmethod
    def empty(cls) -> Nab:
        return cls(np.zeros(3), np.zeros(3), np.zeros(3))

    def add(self, t_s: np.ndarray, true_cp: np.ndarray, pred_cp: np.ndarray) -> None:
        bounds = [[t, t + NAB_WINDOW_S] for t in t_s[true_cp]]
        for i in range(len(bounds) - 1):  # "cut right window"
            if bounds[i][1] >= bounds[i + 1][0]:
                bounds[i + 1][0] = bounds[i][1]
        tp = t_s[pred_cp]
        in_any = np.zeros(len(tp), dtype=bool)
        first_rel = []  # where in its window each window's first alarm falls, 0..1
        for lo, hi in bounds:
            inside = (tp >= lo) & (tp <= hi)
            in_any |= inside
            if inside.any():
                first_rel.append((tp[inside][0] - lo) / (hi - lo) if hi > lo else 0.0)
        n_fp = int(np.sum(~in_any))
        n_fn = len(bounds) - len(first_rel)
        events = np.minimum((np.array(first_rel) * 1000).astype(int), len(_X) - 1)
        for k, (a_tp, a_fp, a_fn) in enumerate(NAB_PROFILES.values()):
            y = (a_tp - a_fp) / 2 * -np.tanh(_X[events]) / np.tanh(math.pi / 2)
            y = y + (a_tp - a_fp) / 2 + a_fp
            self.score[k] += a_fp * n_fp + a_fn * n_fn + float(np.sum(y))
            self.null[k] += len(bounds) * a_fn
            self.perfect[k] += len(bounds) * a_tp
        self.missed += n_fn
        self.false_pos += n_fp

    def values(self) -> dict[str, float]:
        out = (
            100
            * (self.score - self.null)
            / np.where(self.perfect > self.null, self.perfect - self.null, 1.0)
        )
        return {name: float(v) for name, v in zip(NAB_PROFILES, out, strict=True)}
