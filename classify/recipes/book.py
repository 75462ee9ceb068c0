"""Recipes as data: the committed ones are TOML files in the repository's `recipes/` folder, read by
name (`pipeline.py recipe NAME`); any other TOML file is read by its path, and `--member` specs
compose one on the command line.

A recipe file sets `Recipe`'s fields (`name`, `description`, `targets`, `patient_model`,
`decision`, `test_intervals`, `train_intervals`, `folds`, `bags`) and lists its members as
`[[members]]` tables: `name`, `kind` (a registered member kind), the member's own options
(`probe`, `layers`, `stats`) and a `source` table, the cache it reads as `extract` options
(`encoder`, `checkpoint`: the weight file's published name looked up in `--weights`, `layers`,
`precision`). `base = "NAME"` starts from another recipe: fields given here replace its fields,
members listed here come after its members. Every choice inside a recipe (C values, which layers)
is made by cross-validation inside the training groups when it is fit; what a committed file fixes
was chosen by that same inner cross-validation on train + val (docs/recipes.md), never on test
patients.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

from classify.recipes.members import MEMBER_KINDS
from classify.recipes.recipe import ExtractSpec, Member, Recipe

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

RECIPE_DIR = Path(__file__).resolve().parents[2] / "recipes"
MEMBER_FIELDS = {"name", "kind", "probe", "layers", "stats", "source"}
SOURCE_FIELDS = {f.name for f in dataclasses.fields(ExtractSpec)} - {"frames"}
RECIPE_FIELDS = {f.name for f in dataclasses.fields(Recipe)} - {"extracts", "members"}


def recipe_from_toml(data: dict, where: str, known: dict[str, Recipe] | None = None) -> Recipe:
    """A recipe from a parsed TOML document; `known`: recipes a `base` may name. Errors name `where`."""
    unknown = sorted(set(data) - RECIPE_FIELDS - {"members", "base"})
    if unknown:
        raise ValueError(f"{where}: unknown recipe fields {unknown}; known: {', '.join(sorted(RECIPE_FIELDS))}, "
                         "members, base")
    members: list[tuple[dict, dict]] = []  # (member options, source) in order
    fields = {}
    if "base" in data:
        base = (known or {}).get(data["base"])
        if base is None:
            raise ValueError(f"{where}: base recipe {data['base']!r} is not a committed recipe")
        fields = {f: getattr(base, f) for f in RECIPE_FIELDS}
        if base.segmentation is not None:  # as a source table, so the extracts are built anew
            fields["segmentation"] = source_table(base.extracts[base.segmentation])
        members = [(member_options(m), source_table(base.extracts[m.extract])) for m in base.members]
    fields.update({k: v for k, v in data.items() if k in RECIPE_FIELDS})
    for i, table in enumerate(data.get("members", [])):
        if not isinstance(table, dict):
            raise ValueError(f"{where}: members[{i}] must be a table")
        unknown = sorted(set(table) - MEMBER_FIELDS)
        if unknown:
            raise ValueError(f"{where}: member {table.get('name', i)!r}: unknown fields {unknown}; "
                             f"known: {', '.join(sorted(MEMBER_FIELDS))}")
        source = dict(table.get("source") or {})
        bad = sorted(set(source) - SOURCE_FIELDS)
        if bad or "encoder" not in source:
            raise ValueError(f"{where}: member {table.get('name', i)!r}: its source needs an encoder and takes "
                             f"{', '.join(sorted(SOURCE_FIELDS))}" + (f" (not {bad})" if bad else ""))
        members.append(({k: v for k, v in table.items() if k != "source"}, source))
    if "name" not in fields or not members:
        raise ValueError(f"{where}: a recipe needs a name and at least one member")
    return build_recipe(fields, members, where)


def source_table(spec: ExtractSpec) -> dict:
    """An extract spec as a recipe file's `source` table."""
    return {k: v for k, v in dataclasses.asdict(spec).items() if k != "frames"}


def member_options(member: Member) -> dict:
    return {"name": member.name, "kind": member.kind, "probe": member.probe, "layers": member.layers,
            "stats": list(member.stats)}


def build_recipe(fields: dict, members: list[tuple[dict, dict]], where: str) -> Recipe:
    """The recipe of these fields and (member options, source) pairs; the caches it needs are its
    members' distinct sources, in the order members first name them."""
    extracts: list[ExtractSpec] = []
    built = []
    for options, source in members:
        kind = options.get("kind", "windows")
        if kind not in MEMBER_KINDS:
            raise ValueError(f"{where}: member {options.get('name')!r}: unknown kind {kind!r}; "
                             f"known: {', '.join(MEMBER_KINDS)}")
        spec = ExtractSpec(**{**source, "frames": MEMBER_KINDS[kind].frames})
        if spec not in extracts:
            extracts.append(spec)
        opts = {k: v for k, v in options.items() if k != "kind"}
        if "stats" in opts:
            opts["stats"] = tuple(opts["stats"])
        built.append(Member(extract=extracts.index(spec), kind=kind, **opts))
    fields.setdefault("description", "")
    segmentation = fields.get("segmentation")
    if segmentation is not None:  # a frame cache that segments: `{ encoder = ..., precision = ... }`
        bad = sorted(set(segmentation) - SOURCE_FIELDS) if isinstance(segmentation, dict) else None
        if bad is None or bad or "encoder" not in segmentation:
            raise ValueError(f"{where}: segmentation must be a source table with an encoder, taking "
                             f"{', '.join(sorted(SOURCE_FIELDS))}" + (f" (not {bad})" if bad else ""))
        spec = ExtractSpec(**{**segmentation, "frames": True})
        if spec not in extracts:
            extracts.append(spec)
        fields["segmentation"] = extracts.index(spec)
    return Recipe(extracts=tuple(extracts), members=tuple(built), **fields)


def read_toml(path: str | Path) -> dict:
    """A TOML file's document; a malformed file is refused by name."""
    with open(path, "rb") as fh:
        try:
            return tomllib.load(fh)
        except tomllib.TOMLDecodeError as err:
            raise ValueError(f"{path}: not a valid TOML file ({err})") from None


def committed_recipes(folder: Path = RECIPE_DIR) -> dict[str, Recipe]:
    """Every recipe file in `folder`, by name; files with a `base` after the recipes they name."""
    docs = {path: read_toml(path) for path in sorted(folder.glob("*.toml"))}
    recipes: dict[str, Recipe] = {}
    pending = dict(docs)
    while pending:
        ready = {p: d for p, d in pending.items() if d.get("base") is None or d["base"] in recipes}
        if not ready:
            raise ValueError(f"{next(iter(pending))}: its base recipe {next(iter(pending.values()))['base']!r} "
                             "is not a committed recipe (or the bases form a loop)")
        for path, data in ready.items():
            recipe = recipe_from_toml(data, str(path), recipes)
            if recipe.name in recipes:
                raise ValueError(f"{path}: a second recipe named {recipe.name!r}")
            recipes[recipe.name] = recipe
            del pending[path]
    return recipes


RECIPES: dict[str, Recipe] = committed_recipes()


def get_recipe(name: str) -> Recipe:
    """A committed recipe by name, or the recipe in a `.toml` file at that path."""
    if name.endswith(".toml") and Path(name).is_file():
        return recipe_from_toml(read_toml(name), name, RECIPES)
    if name not in RECIPES:
        raise KeyError(f"unknown recipe {name!r}; committed recipes: {', '.join(RECIPES)} (or a .toml file's path)")
    return RECIPES[name]


def member_from_spec(spec: str) -> tuple[dict, dict]:
    """`KIND:ENCODER[:KEY=VALUE,...]` (or `quality`: the signal-quality features' mean and std) ->
    (member options, source). Keys: `probe`, `layers` (`cv`, `all` or `I,J`: the source then caches
    every layer), `stats` (e.g. `mean+std`), `checkpoint` (a published weight file name, looked up in
    `--weights`), `precision`."""
    if spec == "quality":
        spec = "windows:quality:stats=mean+std"
    from embed.encoders import split_spec
    kind, _, rest = spec.partition(":")
    if not rest or rest.startswith(":"):
        raise ValueError(f"--member {spec!r}: expected KIND:ENCODER[:KEY=VALUE,...] (kinds: {', '.join(MEMBER_KINDS)})")
    encoder, more = split_spec(rest)  # ENCODER may be NAME:TARGET (hear:MODULE)
    options: dict = {"kind": kind}
    source: dict = {"encoder": encoder}
    for pair in filter(None, ":".join(more).split(",")):
        key, sep, value = pair.partition("=")
        if not sep:
            raise ValueError(f"--member {spec!r}: {pair!r} is not KEY=VALUE")
        if key in ("probe", "layers"):
            options[key] = value
        elif key == "stats":
            options["stats"] = value.split("+")
        elif key in ("checkpoint", "precision"):
            source[key] = value
        else:
            raise ValueError(f"--member {spec!r}: unknown key {key!r}; known: probe, layers, stats, checkpoint, precision")
    if options.get("layers", "all") != "all":
        source["layers"] = "all"  # the member chooses among, or picks, cached layers
    probe = options.get("probe", "linear")
    options["name"] = f"{encoder.replace(':', '-')}_{kind}" + ("" if probe == "linear" else f"_{probe}")
    return options, source


def recipe_from_specs(specs: list[str], name: str | None = None) -> Recipe:
    """A recipe composed on the command line from `--member` specs (`member_from_spec`), with the
    recipe defaults otherwise (`--set` changes them); of segments members only, a recipe of the
    linear evaluation (selection "val", no patient model, the *any* rule, patient targets), as `probe`
    runs."""
    members = [member_from_spec(s) for s in specs]
    names = [options["name"] for options, _ in members]
    if len(set(names)) != len(names):
        raise ValueError(f"--member: two members named alike ({', '.join(names)}); give one another probe or kind")
    fields = {"name": name or "+".join(names), "description": "composed with --member"}
    if all(MEMBER_KINDS[options["kind"]].selection == "val" for options, _ in members if options["kind"] in MEMBER_KINDS):
        # members of the linear evaluation: the recipe is a probe's (`probe`'s defaults; --set changes them)
        fields.update(selection="val", patient_model=False, decision="any", targets="patient")
    return build_recipe(fields, members, "--member")
