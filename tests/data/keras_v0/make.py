"""Made at 122e757 (the last main before the rename to vit_porting): tiny model.keras files of each family."""
import sys

import keras
import numpy as np
import porting.families.cait.model as cait_model
import porting.families.cvt.model as cvt_model
import porting.families.vit.model as vit_model
from porting.families.cait import CaiTConfig
from porting.families.cvt import CvTConfig
from porting.families.vit import ViTConfig

out = sys.argv[1]
configs = {
    "cait": (cait_model, CaiTConfig(image_size=32, patch_size=16, num_classes=10, embed_dim=32, depth=1, num_heads=2,
                                    depth_token_only=1, init_values=0.5)),
    "cvt": (cvt_model, CvTConfig(image_size=32, num_classes=10, embed_dims=(16, 24, 32), num_heads=(1, 2, 2),
                                 depths=(1, 1, 1))),
    "vit": (vit_model, ViTConfig(image_size=32, patch_size=16, num_classes=10, embed_dim=32, depth=1, num_heads=2,
                                 init_values=0.5, distilled=True)),
}
rng = np.random.default_rng(0)
images = rng.standard_normal((2, 32, 32, 3)).astype(np.float32)
np.save(f"{out}/images.npy", images)
for name, (module, config) in configs.items():
    model = module.build_keras(config, name=name)
    for v in model.weights:  # every branch matters: no zero biases, no unit norms
        value = rng.standard_normal(tuple(v.shape)).astype(np.float32) * 0.3
        if "moving_variance" in v.path:
            value = np.abs(value) + 0.5
        v.assign(value)
    model.save(f"{out}/{name}.keras")
    logits = keras.ops.convert_to_numpy(model(images)["logits"])
    np.save(f"{out}/{name}_logits.npy", logits)
    print(name, logits.shape, sum(int(np.prod(v.shape)) for v in model.weights))
