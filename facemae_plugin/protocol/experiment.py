"""The privacy-utility protocol: one work directory, steps that resume, one row per released variant.

    data       split A (teacher + FaceMAE training), split B (to release), the verification .bin sets and,
               where asked, split C (the adaptive attackers' people): synthetic, or the user's shards (``datasets``)
    teacher    recogniser trained on A (or given): the frozen IRM teacher and, never having seen B, the attacker
    facemae    FaceMAE pretrained on A (or given), with IRM, and without it for the ablation
    release    split B passed through a privatizer (FaceMAE, blur, pixelate, noise, masked-only)
    recogniser trained on the released B only, then verified on every verification set
    audit      released B against original B: how often a reconstruction retrieves its source, and
               (teacher) how often a released face resembles one of A's people

Every step writes its outputs and then ``steps/<step>.done.json``; a re-run reuses finished steps.
Seeds: data, teacher and FaceMAE use ``protocol.seed``; a row's ``seed`` drives its privatizer
(masks, noise) and its recogniser's initialisation and batch order.
"""
import os

from easydict import EasyDict as edict

from ..data.synthetic import write_holdout_bin, write_identity_shard
from ..data.split import split_by_identity
from .datasets import (check_disjoint, check_trained_on, data_mode, recorded_data, shard_fingerprint, shard_summary,
                       val_sets)
from .jobs import facemae_block, pretrain_config, recognition_config, summarise_training, variant_privatizer
from .spec import (DETERMINISTIC_METHODS, ORIGINAL, TARGET_KEY, ProtocolError, check_variant, facemae_step_name, slug,
                   variant_inputs)
from .store import StepStore
from .verdicts import VAL_PREFIX, with_target_check, worst_columns


def _mean(values):
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


class Experiment(StepStore):
    """The protocol's steps, from data to audited rows, in one work directory (``StepStore``)."""

    def __init__(self, work_dir, protocol=None, progress=True):
        super().__init__(work_dir, protocol, progress)
        self._data = None  # the data step's result, once read

    @property
    def holdout_bin(self):
        return self.path("data", "holdout.bin")

    # --- data -----------------------------------------------------------------------------

    def data(self):
        """Split A (train), split B (release) and the verification sets (see ``datasets``)."""
        if self._data is not None:
            return self._data
        mode = data_mode(self.protocol.data)
        if mode == "synthetic":
            self._data = self.run_step("data", self._synthetic_data)
            return self._data
        done = self.run_step("data", lambda: self._user_data(mode))
        for name in ("train", "release"):  # the user's folders must still hold what the steps were made from
            if shard_fingerprint(done[name], name) != done["fingerprints"][name]:
                raise ProtocolError(f"protocol.data.{name}: {done[name]} changed since the steps in {self.work_dir} "
                                    "were made from it; use a new work directory")
        self._data = done
        return done

    def _synthetic_data(self):
        """Disjoint ranges of synthetic identities: split A, split B, the held-out pairs and, when the
        protocol asks for it, split C (the adaptive attackers' people)."""
        p = self.protocol
        d = p.data
        a = range(d.train_identities)
        b = range(a.stop, a.stop + d.release_identities)
        held = list(range(b.stop, b.stop + d.holdout_identities))
        c = range(b.stop + d.holdout_identities, b.stop + d.holdout_identities + d.attacker_identities)
        write_identity_shard(self.path("data", "train"), p.seed, a, d.train_images_per_identity,
                             progress=self.progress, desc="split A", detail=d.detail)
        write_identity_shard(self.path("data", "release"), p.seed, b, d.release_images_per_identity,
                             progress=self.progress, desc="split B", detail=d.detail)
        pairs = write_holdout_bin(self.holdout_bin, p.seed, held, d.holdout_images_per_identity,
                                  d.num_pairs, progress=self.progress, detail=d.detail)
        done = {"train": self.path("data", "train"), "release": self.path("data", "release"),
                "holdout": self.holdout_bin, "pairs": pairs,
                "identities": {"train": [a.start, a.stop], "release": [b.start, b.stop],
                               "holdout": [held[0], held[-1] + 1]},
                "classes": {"train": len(a), "release": len(b)}, "val": val_sets(d, self.holdout_bin)}
        if len(c):
            write_identity_shard(self.path("data", "attacker"), p.seed, c, d.attacker_images_per_identity,
                                 progress=self.progress, desc="split C", detail=d.detail)
            done["attacker"] = self.path("data", "attacker")
            done["identities"]["attacker"] = [c.start, c.stop]
            done["classes"]["attacker"] = len(c)
        return done

    def _user_data(self, mode):
        """The user's shards: two folders checked for shared people, or one split by identity here."""
        d = self.protocol.data
        sets = val_sets(d)  # before any work: a missing .bin is named now
        if mode == "source":
            split_by_identity(d.source, self.path("data", "train"), self.path("data", "release"), d.fraction,
                              seed=self.protocol.seed, overwrite=True, progress=self.progress)
            train, release = (shard_summary(self.path("data", name), name) for name in ("train", "release"))
        else:
            train, release = shard_summary(d.train, "train"), shard_summary(d.release, "release")
            check_disjoint(train, release, self.progress)
        done = {"train": train["path"], "release": release["path"], "val": sets,
                "classes": {"train": train["classes"], "release": release["classes"]},
                "fingerprints": {"train": train["fingerprint"], "release": release["fingerprint"]}}
        if d.get("attacker"):
            attacker = shard_summary(d.attacker, "attacker")
            for name, other in (("train", train), ("release", release)):
                check_disjoint(other, attacker, self.progress, names=(name, "attacker"))
            done.update(attacker=attacker["path"])
            done["classes"]["attacker"] = attacker["classes"]
            done["fingerprints"]["attacker"] = attacker["fingerprint"]
        return done

    @property
    def splits(self):
        """The data step's result, with what a step finished before these keys existed implies."""
        done = self.data()
        d = self.protocol.data
        return {**done, "val": done.get("val") or {"holdout": self.holdout_bin},
                "classes": done.get("classes") or {"train": d.train_identities, "release": d.release_identities}}

    def verify_sets(self, embedder, roc_dir=None):
        """Every verification set verified by ``embedder``: ``{name: report}`` (see ``bin_report``)."""
        from ..evaluation.bin_report import verify_bin

        return {name: verify_bin(embedder, path, device=self.device, roc_dir=roc_dir)
                for name, path in self.splits["val"].items()}

    def _given_model(self, what, model, recorded):
        """A model the protocol names instead of training it, checked against the splits it must fit."""
        splits = self.splits
        fingerprints = splits.get("fingerprints") or {
            name: shard_fingerprint(splits[name], name) for name in ("train", "release")}
        train, release = ({"path": splits[name], "fingerprint": fingerprints[name]} for name in ("train", "release"))
        check_trained_on(model, recorded, train, release, what)

    # --- models trained on split A ----------------------------------------------------------------

    def teacher(self):
        """The recogniser trained on split A (or the protocol's ``teacher.checkpoint``), verified on every set."""
        from ..train.recognise import train_recogniser

        p = self.protocol
        splits = self.splits
        out = self.path("teacher")

        def build():
            from ..evaluation.embed import load_embedder

            if p.teacher.checkpoint:
                self._given_model("teacher", p.teacher.checkpoint, recorded_data(p.teacher.checkpoint))
                summary = {"model": os.path.abspath(p.teacher.checkpoint), "given": True}
            else:
                # Verified once at the end, not per epoch: the held-out passes would cost more than the training.
                cfg = recognition_config(p, p.teacher, splits["train"], splits["classes"]["train"], out,
                                         p.teacher.seed)
                summary = summarise_training(train_recogniser(cfg, device=p.device, progress=self.progress))
            embedder = load_embedder(summary["model"], p.teacher.network, device=self.device)
            summary["val_accuracy"] = {name: report["accuracy_flip"]
                                       for name, report in self.verify_sets(embedder).items()}
            return summary

        return self.run_step("teacher", build, {"checkpoint": p.teacher.checkpoint} if p.teacher.checkpoint else None)

    def facemae(self, irm=True, overrides=None):
        """FaceMAE pretrained on split A; ``irm=False`` is the ablation without the teacher.

        ``overrides`` (keys of the protocol's ``facemae`` block, e.g. ``{"irm_weight": 0.3}``) train
        another model in its own step, for sweeps of the training recipe. A ``checkpoint`` (the
        protocol's serves the default model with IRM; an override's serves its own) is used as it is.
        """
        from ..train.pretrain import pretrain

        p = self.protocol
        f = facemae_block(p, {"pretrain": overrides})
        name = facemae_step_name(irm, overrides)
        given = (overrides or {}).get("checkpoint") or (p.facemae.checkpoint if irm and not overrides else None)
        if given:
            return self.run_step(name, lambda: self._given_facemae(given), {"checkpoint": given})
        if irm and f.irm_weight > 0:
            self.teacher()
        splits = self.splits
        cfg = pretrain_config(p, f, splits["train"], self.path(name), f.irm_weight if irm else 0.0,
                              self.path("teacher", "model.pt") if not p.teacher.checkpoint else p.teacher.checkpoint)
        return self.run_step(name, lambda: summarise_training(
            pretrain(cfg, device=p.device, progress=self.progress)))

    def _given_facemae(self, checkpoint):
        from ..models.mae import FaceMAE

        self._given_model("facemae", checkpoint, FaceMAE.from_checkpoint(checkpoint).extra_config.get("data"))
        return {"checkpoint": os.path.abspath(checkpoint), "given": True}

    # --- one released variant -------------------------------------------------------------------

    @staticmethod
    def row_name(variant, seed):
        """Names the recogniser trained on a (variant, seed) release and its steps."""
        return f"{slug(variant['name'])}-s{seed}"

    @property
    def convert_settings(self):
        """How every release of the protocol is encoded (its ``release`` block)."""
        from ..convert.settings import ConvertSettings

        return ConvertSettings(quality=self.protocol.release.quality, batch_size=self.protocol.release.batch_size)

    def release_name(self, variant, seed):
        name = slug(variant["name"])
        return name if variant["method"] in DETERMINISTIC_METHODS else f"{name}-s{seed}"

    def release(self, variant, seed):
        """Split B through the variant's privatizer; ``original`` releases split B itself."""
        from ..convert import convert

        original = self.splits["release"]
        if variant["method"] == "original":
            return {"released": original, "method": "original"}
        name = self.release_name(variant, seed)
        out = self.path("released", name)

        def build():  # the privatizer (a FaceMAE checkpoint, perhaps) is needed only to run the step
            summary = convert(original, out, self.privatizer(variant, seed), self.convert_settings, overwrite=True,
                              progress=self.progress)
            return {"released": out, "method": summary["method"], "images_per_s": summary["images_per_s"]}

        shared = variant["method"] in DETERMINISTIC_METHODS  # one release serves every seed
        return self.run_step(f"release-{name}", build, variant_inputs(variant, None if shared else seed))

    def privatizer(self, variant, seed):
        """The variant's privatizer; a ``facemae`` variant's model is trained first if need be, and a
        variant with a ``target_leakage`` is calibrated first (``calibration``)."""
        checkpoint = None
        if variant["method"] == "facemae":
            checkpoint = self.facemae(irm=variant.get("irm", True), overrides=variant.get("pretrain"))["checkpoint"]
        if TARGET_KEY in variant:
            variant = self.calibrated(variant, seed)
        return variant_privatizer(self.protocol, variant, seed, checkpoint)

    def calibrated(self, variant, seed):
        """``variant`` with its strength set by bisection to the weakest meeting its ``target_leakage``
        on split B under the worst of the model-free attackers and the teacher (``publish.calibrate``; its own
        step). The protocol's seeds are its own, so ``reapply`` would find every source: it is skipped."""
        from ..evaluation.embed import load_embedder
        from ..evaluation.suite import SuiteAttacker, model_free_attackers
        from ..publish.calibrate import CalibrationOptions, calibrate
        from ..privatizers.methods import STRENGTHS

        method, param = variant["method"], STRENGTHS[variant["method"]].param
        plain = {key: value for key, value in variant.items() if key != TARGET_KEY}
        checkpoint = self.facemae(irm=variant.get("irm", True), overrides=variant.get("pretrain"))["checkpoint"] \
            if method == "facemae" else None
        teacher = self.teacher()["model"]

        def build():
            embedder = load_embedder(teacher, self.protocol.teacher.network, device=self.device)
            attackers = model_free_attackers() + [SuiteAttacker("teacher", embedder, "recogniser", model=teacher)]
            options = CalibrationOptions(variant[TARGET_KEY], self.convert_settings, seed=seed, device=self.device,
                                         progress=self.progress, reapply=False)
            return calibrate(self.splits["release"], self.path("calibration"), method,
                             lambda value: variant_privatizer(self.protocol, {**plain, param: value}, seed, checkpoint),
                             attackers, options)

        shared = method in DETERMINISTIC_METHODS
        done = self.run_step(f"calibrate-{self.release_name(variant, seed)}", build,
                             variant_inputs(variant, None if shared else seed))
        return {**plain, param: done["value"]}

    def recogniser(self, variant, seed):
        """The shared recogniser recipe trained on the released split B, verified on held-out ids."""
        from ..train.recognise import train_recogniser

        released = self.release(variant, seed)["released"]
        p = self.protocol
        out = self.path("recognisers", self.row_name(variant, seed))
        # The verify step evaluates the final model once; per-epoch checks would only cost time.
        cfg = recognition_config(p, p.recogniser, released, self.splits["classes"]["release"], out,
                                 p.recogniser.seed + seed)
        return self.run_step(f"recogniser-{self.row_name(variant, seed)}", lambda: summarise_training(
            train_recogniser(cfg, device=p.device, progress=self.progress)), variant_inputs(variant, seed))

    def verify(self, variant, seed):
        """The row's recogniser on every verification set; ``accuracy_flip`` and ``tar_at_far`` are their means."""
        from ..evaluation.embed import load_embedder

        model = self.recogniser(variant, seed)["model"]
        out = self.path("recognisers", self.row_name(variant, seed))

        def build():
            embedder = load_embedder(model, self.protocol.recogniser.network, device=self.device)
            reports = self.verify_sets(embedder, roc_dir=out)
            per_set = {name: {key: report[key] for key in ("accuracy_flip", "accuracy_std", "tar_at_far", "far_target",
                                                           "roc_png")} for name, report in reports.items()}
            first = next(iter(per_set.values()))
            return {"accuracy_flip": _mean(r["accuracy_flip"] for r in per_set.values()),
                    "accuracy_std": first["accuracy_std"], "far_target": first["far_target"],
                    "tar_at_far": _mean(r["tar_at_far"] for r in per_set.values()), "roc_png": first["roc_png"],
                    "val": per_set}

        return self.run_step(f"verify-{self.row_name(variant, seed)}", build, variant_inputs(variant, seed))

    @property
    def adaptive_split(self):
        """The split the adaptive attackers learn on: C (people no model of the protocol saw, as unseen
        by the reconstructor as the released ones) where the protocol has one, else A."""
        return "attacker" if self.splits.get("attacker") else "train"

    def adaptive(self, variant, seed, split=None, num_epoch=None):
        """The adaptive attacker of a variant: the protocol's recogniser recipe trained on a split beside
        its release by the variant's method (with the attacker's own seed), under the same labels, so it
        learns to see through the method (McPherson, Shokri, Shmatikov 2016). ``split``: ``attacker``
        (C) or ``train`` (A; FaceMAE learnt those faces); default ``adaptive_split``. ``num_epoch``:
        the recipe's unless given (to measure how training length changes what it finds).
        ``{"model": ...}``."""
        from ..publish.adaptive import beside_release
        from ..train.recognise import train_recogniser

        split = split or self.adaptive_split
        name = self.audit_name(self.release_name(variant, seed), "adaptive")
        if split != self.adaptive_split:
            name += f"-on-{split}"
        if num_epoch is not None:
            name += f"-e{num_epoch}"
        folder = self.path("adaptive", name)

        def build():
            p = self.protocol
            recipe = p.recogniser if num_epoch is None else edict({**p.recogniser, "num_epoch": num_epoch})
            pairs = beside_release(self.splits[split], os.path.join(folder, "data"), self.privatizer(variant, seed),
                                   self.convert_settings)
            cfg = recognition_config(p, recipe, pairs, self.splits["classes"][split],
                                     os.path.join(folder, "recogniser"), p.recogniser.seed)
            return {**summarise_training(train_recogniser(cfg, device=p.device, progress=self.progress)),
                    "split": split}

        return self.run_step(f"train-{name}", build, self._adaptive_inputs(variant, seed, split))

    def _adaptive_inputs(self, variant, seed, split=None):
        """What keys an adaptive attacker's steps: its variant, and its split where that is not A (so
        that an attacker trained on A before the protocol had a split C is trained again)."""
        shared = variant["method"] in DETERMINISTIC_METHODS
        inputs = variant_inputs(variant, None if shared else seed)
        split = split or self.adaptive_split
        return inputs if split == "train" else {**inputs, "split": split}

    def attacker(self, kind, variant=None, seed=None):
        """``(model.pt, network)`` of an attacker; ``(None, None)`` for the pixel and verbatim attackers, which
        have no model.

        ``teacher``: trained on split A, never saw split B; it is also IRM's teacher, so FaceMAE was
        trained to keep exactly its similarity structure. ``informed``: the protocol's recogniser
        trained on the original split B (seed 0), a different network state that knows the people.
        ``adaptive``: trained on ``adaptive_split`` beside its release by ``variant``'s method (``adaptive``).
        """
        from ..evaluation.suite import MODEL_FREE

        if kind in MODEL_FREE:  # no model
            return None, None
        if kind == "teacher":
            return self.teacher()["model"], self.protocol.teacher.network
        if kind == "informed":
            return self.recogniser(ORIGINAL, 0)["model"], self.protocol.recogniser.network
        if kind == "adaptive":
            return self.adaptive(variant, seed)["model"], self.protocol.recogniser.network
        raise ProtocolError(f"unknown attacker {kind!r}; expected pixels, verbatim, teacher, informed or adaptive")

    def audit(self, variant, seed, attacker="teacher"):
        """Leakage of the release: each released image queries the original split B."""
        from ..evaluation.audit import AuditOptions, audit
        from ..evaluation.embed import load_embedder
        from ..evaluation.suite import MODEL_FREE

        released = self.release(variant, seed)["released"]
        model, network = self.attacker(attacker, variant, seed)
        name = self.audit_name(self.release_name(variant, seed), attacker)

        def build():
            embedder = MODEL_FREE[attacker]() if model is None else load_embedder(model, network, device=self.device)
            # The teacher's audit also asks whether released faces resemble split A's people.
            options = AuditOptions(device=self.device, plots=attacker == "teacher", progress=self.progress)
            report = audit(self.splits["release"], released, embedder, options, out_dir=self.path("audits", name),
                           model=model, attacker=attacker,
                           training_set=self.splits["train"] if attacker == "teacher" else None,
                           embedding_cache=self.embedding_cache)
            lookalikes = report["training_set"]
            return {**{key: report[key] for key in ("instance_rank1", "identity_rank1", "reid_rank1", "tar_at_far",
                                                    "far_target", "mean_source_cosine", "report")},
                    "training_set": None if lookalikes is None else {
                        key: lookalikes[key] for key in ("released_fraction", "original_fraction", "mcnemar_z",
                                                         "flagged")}}

        if attacker == "adaptive":
            return self.run_step(f"audit-{name}", build, self._adaptive_inputs(variant, seed))
        shared = variant["method"] in DETERMINISTIC_METHODS
        return self.run_step(f"audit-{name}", build, variant_inputs(variant, None if shared else seed))

    @property
    def embedding_cache(self):
        """Where audits keep the originals' and split A's embeddings, one entry per attacker model."""
        return self.path("embeddings")

    @staticmethod
    def audit_name(release_name, attacker):
        return release_name if attacker == "teacher" else f"{attacker}-{release_name}"

    def row(self, variant, seed, informed_attacker=False, adaptive_attacker=False):
        """Every step of one (variant, seed): released, trained, verified, audited by the model-free
        attackers and the teacher, and the worst case over the attackers.

        ``informed_attacker`` adds the audit by the recogniser trained on the original split B
        (one more training if the ``original`` row has not run yet); ``adaptive_attacker`` the audit by
        the variant's adaptive attacker (one more training per variant; none for the originals).
        """
        check_variant(variant)
        verified = self.verify(variant, seed)
        leaked = self.audit(variant, seed)
        pixels = self.audit(variant, seed, attacker="pixels")
        verbatim = self.audit(variant, seed, attacker="verbatim")
        unmeasured = dict.fromkeys(("instance_rank1", "identity_rank1", "reid_rank1"))
        informed = self.audit(variant, seed, attacker="informed") if informed_attacker else unmeasured
        adaptive = self.audit(variant, seed, attacker="adaptive") \
            if adaptive_attacker and variant["method"] != "original" else unmeasured
        # a step finished before these keys existed verified the held-out set only, and had no look-alikes
        per_set = verified.get("val") or {"holdout": {"accuracy_flip": verified["accuracy_flip"]}}
        lookalikes = leaked.get("training_set")
        row = {"variant": variant["name"], "method": variant["method"], "seed": seed,
                "accuracy": verified["accuracy_flip"], "error": 1.0 - verified["accuracy_flip"],
                **{f"{VAL_PREFIX}{name}": report["accuracy_flip"] for name, report in per_set.items()},
                "lookalike_excess": None if lookalikes is None else
                lookalikes["released_fraction"] - lookalikes["original_fraction"],
                "tar_at_far": verified["tar_at_far"], "instance_rank1": leaked["instance_rank1"],
                "identity_rank1": leaked["identity_rank1"], "reid_rank1": leaked.get("reid_rank1"),
                "source_tar_at_far": leaked["tar_at_far"],
                "pixels_instance_rank1": pixels["instance_rank1"], "pixels_reid_rank1": pixels["reid_rank1"],
                "verbatim_instance_rank1": verbatim["instance_rank1"], "verbatim_reid_rank1": verbatim["reid_rank1"],
                "informed_instance_rank1": informed["instance_rank1"],
                "informed_identity_rank1": informed["identity_rank1"],
                "informed_reid_rank1": informed.get("reid_rank1"),
                "adaptive_instance_rank1": adaptive["instance_rank1"], "adaptive_reid_rank1": adaptive["reid_rank1"],
                "adaptive_split": self.adaptive_split if adaptive is not unmeasured else None,
                "roc_png": verified["roc_png"], "audit": leaked["report"],
                "setting": self.calibrated(variant, seed) if TARGET_KEY in variant else None,
                "target_leakage": variant.get(TARGET_KEY)}
        return with_target_check({**row, **worst_columns(row)})

    def row_finished(self, variant, seed, informed_attacker=False, adaptive_attacker=False):
        """Whether ``row`` would only reuse finished steps (nothing to train or convert)."""
        from ..evaluation.suite import MODEL_FREE

        release = self.release_name(variant, seed)
        attackers = ["teacher", *MODEL_FREE] + (["informed"] if informed_attacker else []) \
            + (["adaptive"] if adaptive_attacker and variant["method"] != "original" else [])
        shared = variant["method"] in DETERMINISTIC_METHODS
        steps = [(f"verify-{self.row_name(variant, seed)}", variant_inputs(variant, seed))]
        steps += [(f"audit-{self.audit_name(release, a)}", self._adaptive_inputs(variant, seed) if a == "adaptive"
                   else variant_inputs(variant, None if shared else seed)) for a in attackers]
        return all(self.step_finished(step, inputs) for step, inputs in steps)

    @property
    def device(self):
        from ..core.devices import pick_device

        return pick_device(self.protocol.device)

