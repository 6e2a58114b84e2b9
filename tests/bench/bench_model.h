/*
 * bench_model.h: the workload's model, torchvision.models.resnet50's 53
 * BatchNorm2d layers by module name, width and input resolution.
 *
 * Both benchmarks upload statistics shaped like this model; the table is a
 * literal, checked by layers_init() against the known totals.
 */
#ifndef BENCH_MODEL_H
#define BENCH_MODEL_H

#include <stddef.h>
#include <stdint.h>

#define NBS 32 /* images per batch (per GPU): count = NBS * H * W */
#define RESNET50_LAYERS 53
#define RESNET50_CHANNELS 26560
#define N_LAYERS ((size_t)RESNET50_LAYERS)

struct bn_layer {
	const char *name; /* as in model.named_modules() */
	unsigned channels;
	unsigned hw;   /* spatial size of its input (224x224 images) */
	int64_t count; /* elements per channel in one batch: NBS * hw * hw */
	size_t offset; /* first channel in the flat arrays */
};

/* The layers in named_modules() order; count and offset set by layers_init(). */
extern struct bn_layer layers[RESNET50_LAYERS];

/* The sum of the widths: the length of the flat per-channel arrays. */
extern size_t n_channels;

/*
 * Fill in count and offset of every layer and n_channels; die() when the
 * table does not have 53 layers and 26,560 channels. Call once, from main.
 */
void layers_init(void);

#endif /* BENCH_MODEL_H */
