"""The privacy-utility protocol: one work directory, steps that resume, one row per released variant.

    data       synthetic split A (teacher + FaceMAE training), split B (to release), held-out .bin
    teacher    recogniser trained on A: the frozen IRM teacher and, never having seen B, the attacker
    facemae    FaceMAE pretrained on A (with IRM, and without it for the ablation)
    release    split B passed through a privatizer (FaceMAE, blur, pixelate, noise, masked-only)
    recogniser trained on the released B only, then verified on the held-out identities
    audit      released B against original B: how often a reconstruction retrieves its source

Every step writes its outputs and then ``steps/<step>.done.json``; a re-run reuses finished steps.
Seeds: data, teacher and FaceMAE use ``protocol.seed``; a row's ``seed`` drives its privatizer
(masks, noise) and its recogniser's initialisation and batch order.
"""
from ..data.synthetic import write_holdout_bin, write_identity_shard
from .recipes import facemae_block, pretrain_config, recognition_config, summarise_training, variant_privatizer
from .spec import DETERMINISTIC_METHODS, ORIGINAL, ProtocolError, check_variant, facemae_step_name, slug, variant_inputs
from .store import StepStore


class Experiment(StepStore):
    """The protocol's steps, from data to audited rows, in one work directory (``StepStore``)."""

    @property
    def holdout_bin(self):
        return self.path("data", "holdout.bin")

    # --- data -----------------------------------------------------------------------------

    def data(self):
        """Split A, split B and the held-out pairs: three disjoint ranges of synthetic identities."""
        p = self.protocol
        d = p.data
        a = range(d.train_identities)
        b = range(a.stop, a.stop + d.release_identities)
        held = list(range(b.stop, b.stop + d.holdout_identities))

        def build():
            write_identity_shard(self.path("data", "train"), p.seed, a, d.train_images_per_identity,
                                 progress=self.progress, desc="split A", detail=d.detail)
            write_identity_shard(self.path("data", "release"), p.seed, b, d.release_images_per_identity,
                                 progress=self.progress, desc="split B", detail=d.detail)
            pairs = write_holdout_bin(self.holdout_bin, p.seed, held, d.holdout_images_per_identity,
                                      d.num_pairs, progress=self.progress, detail=d.detail)
            return {"train": self.path("data", "train"), "release": self.path("data", "release"),
                    "holdout": self.holdout_bin, "pairs": pairs,
                    "identities": {"train": [a.start, a.stop], "release": [b.start, b.stop],
                                   "holdout": [held[0], held[-1] + 1]}}

        return self.run_step("data", build)

    # --- models trained on split A ----------------------------------------------------------------

    def teacher(self):
        from ..train.recognise import train_recogniser

        self.data()
        p = self.protocol
        out = self.path("teacher")
        # Verified once at the end, not per epoch: the held-out passes would cost more than the training.
        cfg = recognition_config(p, p.teacher, self.path("data", "train"), p.data.train_identities, out,
                                 p.teacher.seed)
        def build():
            from ..evaluation.embed import load_embedder
            from ..evaluation.bin_report import verify_bin

            summary = summarise_training(train_recogniser(cfg, device=p.device, progress=self.progress))
            embedder = load_embedder(summary["model"], p.teacher.network, device=self.device)
            summary["holdout_accuracy"] = verify_bin(embedder, self.holdout_bin, device=self.device)["accuracy_flip"]
            return summary

        return self.run_step("teacher", build)

    def facemae(self, irm=True, overrides=None):
        """FaceMAE pretrained on split A; ``irm=False`` is the ablation without the teacher.

        ``overrides`` (keys of the protocol's ``facemae`` block, e.g. ``{"irm_weight": 0.3}``) train
        another model in its own step, for sweeps of the training recipe.
        """
        from ..train.pretrain import pretrain

        p = self.protocol
        f = facemae_block(p, {"pretrain": overrides})
        name = facemae_step_name(irm, overrides)
        if irm and f.irm_weight > 0:
            self.teacher()
        else:
            self.data()
        cfg = pretrain_config(p, f, self.path("data", "train"), self.path(name), f.irm_weight if irm else 0.0,
                              self.path("teacher", "model.pt"))
        return self.run_step(name, lambda: summarise_training(
            pretrain(cfg, device=p.device, progress=self.progress)))

    # --- one released variant -------------------------------------------------------------------

    @staticmethod
    def row_name(variant, seed):
        """Names the recogniser trained on a (variant, seed) release and its steps."""
        return f"{slug(variant['name'])}-s{seed}"

    def release_name(self, variant, seed):
        name = slug(variant["name"])
        return name if variant["method"] in DETERMINISTIC_METHODS else f"{name}-s{seed}"

    def release(self, variant, seed):
        """Split B through the variant's privatizer; ``original`` releases split B itself."""
        from ..convert import convert

        self.data()
        if variant["method"] == "original":
            return {"released": self.path("data", "release"), "method": "original"}
        name = self.release_name(variant, seed)
        out = self.path("released", name)

        def build():  # the privatizer (a FaceMAE checkpoint, perhaps) is needed only to run the step
            summary = convert(self.path("data", "release"), out, self.privatizer(variant, seed),
                              quality=self.protocol.release.quality, batch_size=self.protocol.release.batch_size,
                              overwrite=True, progress=self.progress)
            return {"released": out, "method": summary["method"], "images_per_s": summary["images_per_s"]}

        shared = variant["method"] in DETERMINISTIC_METHODS  # one release serves every seed
        return self.run_step(f"release-{name}", build, variant_inputs(variant, None if shared else seed))

    def privatizer(self, variant, seed):
        """The variant's privatizer; a ``facemae`` variant's model is trained first if need be."""
        checkpoint = None
        if variant["method"] == "facemae":
            checkpoint = self.facemae(irm=variant.get("irm", True), overrides=variant.get("pretrain"))["checkpoint"]
        return variant_privatizer(self.protocol, variant, seed, checkpoint)

    def recogniser(self, variant, seed):
        """The shared recogniser recipe trained on the released split B, verified on held-out ids."""
        from ..train.recognise import train_recogniser

        released = self.release(variant, seed)["released"]
        p = self.protocol
        out = self.path("recognisers", self.row_name(variant, seed))
        # The verify step evaluates the final model once; per-epoch checks would only cost time.
        cfg = recognition_config(p, p.recogniser, released, p.data.release_identities, out, p.recogniser.seed + seed)
        return self.run_step(f"recogniser-{self.row_name(variant, seed)}", lambda: summarise_training(
            train_recogniser(cfg, device=p.device, progress=self.progress)), variant_inputs(variant, seed))

    def verify(self, variant, seed):
        from ..evaluation.embed import load_embedder
        from ..evaluation.bin_report import verify_bin

        model = self.recogniser(variant, seed)["model"]
        out = self.path("recognisers", self.row_name(variant, seed))

        def build():
            embedder = load_embedder(model, self.protocol.recogniser.network, device=self.device)
            report = verify_bin(embedder, self.holdout_bin, device=self.device, roc_dir=out)
            return {key: report[key] for key in ("accuracy_flip", "accuracy_std", "tar_at_far", "far_target",
                                                 "roc_png")}

        return self.run_step(f"verify-{self.row_name(variant, seed)}", build, variant_inputs(variant, seed))

    def attacker(self, kind):
        """``(model.pt, network)`` of an attacker recogniser.

        ``teacher``: trained on split A, never saw split B; it is also IRM's teacher, so FaceMAE was
        trained to keep exactly its similarity structure. ``informed``: the protocol's recogniser
        trained on the original split B (seed 0), a different network state that knows the people.
        """
        if kind == "teacher":
            return self.teacher()["model"], self.protocol.teacher.network
        if kind == "informed":
            return self.recogniser(ORIGINAL, 0)["model"], self.protocol.recogniser.network
        raise ProtocolError(f"unknown attacker {kind!r}; expected teacher or informed")

    def audit(self, variant, seed, attacker="teacher"):
        """Leakage of the release: each released image queries the original split B."""
        from ..evaluation.audit import audit
        from ..evaluation.embed import load_embedder

        released = self.release(variant, seed)["released"]
        model, network = self.attacker(attacker)
        name = self.audit_name(self.release_name(variant, seed), attacker)

        def build():
            embedder = load_embedder(model, network, device=self.device)
            report = audit(self.path("data", "release"), released, embedder, device=self.device,
                           out_dir=self.path("audits", name),
                           progress=self.progress, model=model, plots=attacker == "teacher")
            return {key: report[key] for key in ("instance_rank1", "identity_rank1", "tar_at_far", "far_target",
                                                 "mean_source_cosine", "report")}

        shared = variant["method"] in DETERMINISTIC_METHODS
        return self.run_step(f"audit-{name}", build, variant_inputs(variant, None if shared else seed))

    @staticmethod
    def audit_name(release_name, attacker):
        return release_name if attacker == "teacher" else f"{attacker}-{release_name}"

    def row(self, variant, seed, informed_attacker=False):
        """Every step of one (variant, seed): released, trained, verified, audited.

        ``informed_attacker`` adds the audit by the recogniser trained on the original split B
        (one more training if the ``original`` row has not run yet).
        """
        check_variant(variant)
        verified = self.verify(variant, seed)
        leaked = self.audit(variant, seed)
        informed = self.audit(variant, seed, attacker="informed") if informed_attacker else \
            dict.fromkeys(("instance_rank1", "identity_rank1"))
        return {"variant": variant["name"], "method": variant["method"], "seed": seed,
                "accuracy": verified["accuracy_flip"], "error": 1.0 - verified["accuracy_flip"],
                "tar_at_far": verified["tar_at_far"], "instance_rank1": leaked["instance_rank1"],
                "identity_rank1": leaked["identity_rank1"], "source_tar_at_far": leaked["tar_at_far"],
                "informed_instance_rank1": informed["instance_rank1"],
                "informed_identity_rank1": informed["identity_rank1"],
                "roc_png": verified["roc_png"], "audit": leaked["report"]}

    def row_finished(self, variant, seed, informed_attacker=False):
        """Whether ``row`` would only reuse finished steps (nothing to train or convert)."""
        release = self.release_name(variant, seed)
        attackers = ["teacher"] + (["informed"] if informed_attacker else [])
        shared = variant["method"] in DETERMINISTIC_METHODS
        steps = [(f"verify-{self.row_name(variant, seed)}", variant_inputs(variant, seed))]
        steps += [(f"audit-{self.audit_name(release, a)}", variant_inputs(variant, None if shared else seed))
                   for a in attackers]
        return all(self.step_finished(step, inputs) for step, inputs in steps)

    @property
    def device(self):
        from ..core.devices import pick_device

        return pick_device(self.protocol.device)

