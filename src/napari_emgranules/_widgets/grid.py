"""The Point grid dock widget: manual point counting over a micrograph, pre-scored by the models.

"Lay grid" puts a square grid of points (spacing in nm, a seeded random offset:
:func:`~napari_emgranules.core.pointgrid.make_grid`) on the micrograph as a Points layer, each point
scored from the Locations and Granules layers (its region and whether it hits a granule). The user
steps through the points and corrects them with the keyboard, on the grid layer:

* ``Right`` / ``Left``: next / previous point (the view centres on it);
* a region's letter (``A``, ``I``, ``Z``, ``S``, ``N``, ``U``, ``O``): the point's region;
* ``H``: the point hits a granule or not;
* ``Enter``: the point is right as it is.

Every change marks the point as reviewed. The table shows, per region, the point-count pf of the
models and of the reviewed points with its binomial 95% interval, as the review fills. "Save
scores" writes the points as a CSV that ``emgranules grid --manual`` reads (existing files are
never replaced). The scores live in the layer's ``features``, so they survive closing the panel.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from magicgui.widgets import ComboBox, Container, FileEdit, FloatSpinBox, Label, PushButton, SpinBox, Table
from napari.layers import Labels, Points
from napari.utils.notifications import show_info

from ..core.io import atomic_output
from ..core.pointgrid import PointGridError, grid_table, make_grid, score_points
from ..core.schema import LOCATIONS_SCHEMA, ClassSchema
from ._common import layer_pixel_size, layer_schema, notify_error
from .density import _image_name, _is_2d_labels, _kind_of, default_pair, partner_layer

if TYPE_CHECKING:
    import napari

GRID = "emgranules_grid"
"""Metadata key of a grid layer: spacing, seed, offset, the image and the label layers' names."""

DEFAULT_SPACING_NM = 250.0
"""Grid spacing offered first: about 200 points on a 4096 x 4096 micrograph at 0.8 nm/px."""

HIT_COLOUR, MISS_COLOUR, CURRENT_COLOUR = "#ff2020", "#ffffff", "#ffff00"


def grid_points_layer_data(points: pd.DataFrame, schema: ClassSchema) -> tuple[np.ndarray, pd.DataFrame]:
    """The Points layer's data (napari coordinates: pixel centres at integers) and features of the
    scored points of :func:`~napari_emgranules.core.pointgrid.score_points`."""
    data = points[["row", "col"]].to_numpy(float) - 0.5  # core: centres at k + 0.5
    features = pd.DataFrame({
        "point": points["point"].to_numpy(int),
        "region_code": points["region_code"].to_numpy(int),
        "hit": points["hit"].to_numpy(bool),
        "model_region_code": points["region_code"].to_numpy(int),
        "model_hit": points["hit"].to_numpy(bool),
        "reviewed": np.zeros(len(points), bool),
    })
    return data, features


def scores_table(layer: Points, schema: ClassSchema, *, which: str) -> pd.DataFrame:
    """The grid layer's points as :data:`~napari_emgranules.core.pointgrid.POINT_COLUMNS` rows:
    ``which="model"`` the models' scores of every point, ``"reviewed"`` the user's of the points
    reviewed so far."""
    f = layer.features
    image = layer.metadata.get(GRID, {}).get("image", layer.name)
    rows_cols = np.asarray(layer.data, float) + 0.5
    if which == "model":
        keep, codes, hits = np.ones(len(f), bool), f["model_region_code"], f["model_hit"]
    else:
        keep, codes, hits = f["reviewed"].to_numpy(bool), f["region_code"], f["hit"]
    codes = np.asarray(codes, int)[keep]
    return pd.DataFrame({"image": image, "point": np.asarray(f["point"], int)[keep],
                         "row": rows_cols[keep, 0], "col": rows_cols[keep, 1], "region_code": codes,
                         "region": [schema.letters.get(int(c), str(c)) for c in codes],
                         "hit": np.asarray(hits, bool)[keep]})


class PointGridWidget(Container):
    """Lay a point grid, review its points with the keyboard, compare with the models, save."""

    def __init__(self, napari_viewer: napari.viewer.Viewer) -> None:
        self._viewer = napari_viewer
        self._current = -1
        self._locations = ComboBox(label="Locations", choices=self._choices("locations"),
                                   tooltip="The regions layer the points are scored from")
        self._granules = ComboBox(label="Granules", choices=self._choices("granules"))
        self._spacing = FloatSpinBox(label="Spacing (nm)", min=1, max=1e6, step=50,
                                     value=DEFAULT_SPACING_NM,
                                     tooltip="Distance between grid points, in nm of the micrograph")
        self._seed = SpinBox(label="Random seed", min=0, max=2**31 - 1, value=0,
                             tooltip="Seeds the grid's random offset (recorded with the scores)")
        self._lay = PushButton(text="Lay grid")
        self._info = Label(value="")
        self._keys = Label(value="Keys on the grid layer: Right / Left next / previous point;\n"
                                "a region's letter; H hit or not; Enter: right as it is")
        self._table = Table(value={"region": []})
        self._table.read_only = True
        self._path = FileEdit(label="Save to", mode="w", filter="*.csv")
        self._save = PushButton(text="Save scores")
        super().__init__(widgets=[self._locations, self._granules, self._spacing, self._seed,
                                  self._lay, self._info, self._keys, self._table, self._path, self._save])
        self._lay.changed.connect(self.lay_grid)
        self._save.changed.connect(self._save_clicked)
        self._viewer.layers.events.inserted.connect(self._refresh)
        self._viewer.layers.events.removed.connect(self._refresh)
        self._locations.changed.connect(self._pair)
        self._refresh()

    # -- layer choices ---------------------------------------------------------------------------
    def _choices(self, kind: str):
        def choices(_=None) -> list[tuple[str, Labels]]:
            layers = [layer for layer in self._viewer.layers if _is_2d_labels(layer)]
            return [(layer.name, layer) for layer in layers if _kind_of(layer) in (kind, "")]
        return choices

    def _refresh(self, _=None) -> None:
        self._locations.reset_choices()
        self._granules.reset_choices()
        labels = [layer for layer in self._viewer.layers if _is_2d_labels(layer)]
        loc, gra = default_pair(labels)
        if self._locations.value is None and loc is not None:
            self._locations.value = loc
        if self._granules.value is None and gra is not None:
            self._granules.value = gra

    def _pair(self, loc: Labels | None) -> None:
        partner = partner_layer(loc, list(self._viewer.layers)) if loc is not None else None
        if partner is not None and any(c is partner for c in self._granules.choices):
            self._granules.value = partner

    @property
    def layer(self) -> Points | None:
        """The grid layer of the chosen Locations layer, if laid."""
        loc = self._locations.value
        for layer in self._viewer.layers:
            if isinstance(layer, Points) and loc is not None \
                    and layer.metadata.get(GRID, {}).get("locations") == loc.name:
                return layer
        return None

    @property
    def schema(self) -> ClassSchema:
        loc = self._locations.value
        return (layer_schema(loc) if loc is not None else None) or LOCATIONS_SCHEMA

    # -- laying the grid -------------------------------------------------------------------------
    def lay_grid(self, _=None) -> Points | None:
        """Add (or replace, if nothing was reviewed on it) the grid layer; returns it."""
        loc, gra = self._locations.value, self._granules.value
        try:
            if loc is None or gra is None:
                raise PointGridError("choose a Locations and a Granules layer (run Segment first)")
            px, _ = layer_pixel_size(loc)
            if px is None:
                raise PointGridError(f"{loc.name}: the pixel size is unknown; enter it in Segment "
                                     "(the grid spacing is in nm)")
            old = self.layer
            if old is not None and bool(np.any(old.features["reviewed"])):
                raise PointGridError(f"{old.name} holds reviewed points: save them and delete the "
                                     "layer before laying a new grid")
            grid = make_grid(np.shape(loc.data), px, float(self._spacing.value), int(self._seed.value))
            points = score_points(grid, np.asarray(loc.data), np.asarray(gra.data), schema=self.schema,
                                  image=_image_name(loc))
        except (PointGridError, ValueError) as exc:
            notify_error(exc, "Point grid")
            return None
        data, features = grid_points_layer_data(points, self.schema)
        meta = {GRID: {"image": _image_name(loc), "locations": loc.name, "granules": gra.name,
                       "spacing_nm": grid.spacing_nm, "seed": grid.seed, "pixel_size_nm": px,
                       "offset_px": list(grid.offset_px)}}
        if old is not None:
            self._viewer.layers.remove(old)
        layer = self._viewer.add_points(
            data, features=features, name=f"{_image_name(loc)} grid", scale=tuple(loc.scale)[-2:],
            translate=tuple(loc.translate)[-2:], units=tuple(loc.units)[-2:],
            size=max(6.0, grid.spacing_px / 6), symbol="cross",
            face_color=self._colours(features), border_width=0, metadata=meta)
        self._bind_keys(layer)
        self._current = -1
        self._viewer.layers.selection.active = layer
        self._update()
        return layer

    def _bind_keys(self, layer: Points) -> None:
        actions = {"Right": lambda: self.step(1), "Left": lambda: self.step(-1),
                   "h": self.toggle_hit, "Enter": self.accept}
        for cls in self.schema.classes:
            actions[cls.letter.lower()] = (lambda code: lambda: self.set_region(code))(cls.code)
        for key, action in actions.items():
            def handler(_layer: Points, action=action) -> None:  # napari passes the layer
                action()
            layer.bind_key(key, handler, overwrite=True)

    def _colours(self, features: pd.DataFrame) -> np.ndarray:
        colours = np.array([HIT_COLOUR if h else MISS_COLOUR for h in features["hit"]], dtype=object)
        if 0 <= self._current < len(colours):
            colours[self._current] = CURRENT_COLOUR
        return np.asarray(colours, dtype=str)

    # -- reviewing ---------------------------------------------------------------------------------
    def step(self, direction: int) -> int:
        """Go to the next (1) or previous (-1) point: centre the view on it; returns its index."""
        layer = self.layer
        if layer is None or not len(layer.data):
            return -1
        self._current = (self._current + direction) % len(layer.data)
        world = layer.data_to_world(layer.data[self._current])
        self._viewer.camera.center = tuple(world)
        self._update()
        return self._current

    def _edit(self, column: str, value: Any) -> None:
        layer = self.layer
        if layer is None or not 0 <= self._current < len(layer.data):
            show_info("Point grid: go to a point first (Right arrow on the grid layer)")
            return
        features = layer.features.copy()
        if column:
            features.loc[self._current, column] = value
        features.loc[self._current, "reviewed"] = True
        layer.features = features
        self._update()

    def set_region(self, code: int) -> None:
        """The current point lies in region ``code`` (reviewed)."""
        self._edit("region_code", int(code))

    def toggle_hit(self) -> None:
        """The current point hits a granule, or no longer does (reviewed)."""
        layer = self.layer
        if layer is not None and 0 <= self._current < len(layer.data):
            self._edit("hit", not bool(layer.features["hit"].iloc[self._current]))
        else:
            self._edit("hit", None)

    def accept(self) -> None:
        """The current point is right as it is (reviewed), and the next one comes up."""
        self._edit("", None)
        self.step(1)

    # -- table ---------------------------------------------------------------------------------
    def comparison(self) -> pd.DataFrame:
        """Per measured region: the models' and the reviewed points' counts, pf and interval."""
        layer, schema = self.layer, self.schema
        if layer is None:
            return pd.DataFrame()
        model = grid_table(scores_table(layer, schema, which="model"), schema=schema)
        reviewed = grid_table(scores_table(layer, schema, which="reviewed"), schema=schema)
        out = model[["region", "points", "pf_points"]].rename(
            columns={"points": "model points", "pf_points": "model pf"})
        mine = reviewed.set_index("region")
        for column, name in (("points", "reviewed points"), ("pf_points", "reviewed pf"),
                             ("pf_low", "95% low"), ("pf_high", "95% high")):
            out[name] = [mine[column].get(r, math.nan) if len(mine) else math.nan for r in out["region"]]
        return out

    def _update(self) -> None:
        layer = self.layer
        if layer is None:
            self._info.value = ""
            return
        layer.face_color = self._colours(layer.features)
        done = int(np.sum(layer.features["reviewed"]))
        meta = layer.metadata[GRID]
        here = ""
        if 0 <= self._current < len(layer.data):
            f = layer.features.iloc[self._current]
            here = (f"; point {self._current + 1}: {self.schema.letters.get(int(f['region_code']), '?')}"
                    f"{', hit' if f['hit'] else ''}")
        self._info.value = (f"{len(layer.data)} points every {meta['spacing_nm']:g} nm (seed "
                            f"{meta['seed']}); {done} reviewed{here}")
        table = self.comparison()
        self._table.value = {c: [_cell(v) for v in table[c]] for c in table.columns}

    # -- saving ----------------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Write every point's current scores (and whether reviewed) as CSV; never replaces a file."""
        layer = self.layer
        if layer is None:
            raise PointGridError("lay a grid first")
        target = Path(path)
        if not str(path).strip() or target.is_dir() or target.name in ("", "."):
            raise PointGridError("choose a file to save the scores to (Save to)")
        if target.suffix.lower() != ".csv":
            target = target.with_suffix(".csv")
        if target.exists():
            raise FileExistsError(f"{target}: exists already; choose another file")
        f = layer.features
        schema = self.schema
        rows_cols = np.asarray(layer.data, float) + 0.5
        meta = layer.metadata[GRID]
        table = pd.DataFrame({
            "image": meta["image"], "point": f["point"].to_numpy(int), "row": rows_cols[:, 0],
            "col": rows_cols[:, 1],
            "region": [schema.letters.get(int(c), str(c)) for c in f["region_code"]],
            "hit": f["hit"].to_numpy(bool).astype(int), "reviewed": f["reviewed"].to_numpy(bool).astype(int),
            "model_region": [schema.letters.get(int(c), str(c)) for c in f["model_region_code"]],
            "model_hit": f["model_hit"].to_numpy(bool).astype(int),
            "spacing_nm": meta["spacing_nm"], "seed": meta["seed"],
        })
        with atomic_output(target) as tmp:
            table.to_csv(tmp, index=False)
        return target

    def _save_clicked(self, _=None) -> None:
        try:
            written = self.save(self._path.value)
        except (PointGridError, OSError, ValueError) as exc:
            notify_error(exc, "Point grid")
            return
        show_info(f"Point grid: scores saved to {written}")


def _cell(value: Any) -> Any:
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.3f}"
    return value
