"""Names the command line checks before TensorFlow starts, each defined once here.

The modules that implement them import their names from here (the backbone builders, the
augmentations, the strategies), so a flag value is valid exactly when the code has it.
Registries of things a maintainer adds (meta-nets, dataset sources, trainers) live with
them: `clid_tf.metanets`, `clid_tf.data.sources`, `clid_tf.trainers`.
"""

# Backbones of `clid_tf.models.backbones.build`, in --help's order.
BACKBONES = ("small_cnn", "pooled_cnn", "mlp", "resnet32", "preact_resnet18", "resnet34",
             "wrn28_10", "wrn28_2", "wrn28_2_fork", "vgg19_bn", "resnet50")
# Backbones without named blocks (residual or conv): no --meta_scope=top:N.
WITHOUT_BLOCKS = ("mlp", "vgg19_bn")
# Image augmentations of the command line ('flip' is 'weak' without its crop).
AUGMENTS = ("none", "flip", "weak", "strong")
# Reflect padding of the weak augmentation's random crop (pixels): images need more.
CROP_PAD = 4
# tf.distribute strategies (`clid_tf.core.distribute.make_strategy`).
STRATEGIES = ("default", "mirrored", "multi_worker", "tpu")
# What the run exports for serving.
EXPORTS = ("selected", "ensemble", "last", "none")
