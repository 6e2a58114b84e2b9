/*
 * batch: one upload, decoded and checked (docs/API.md, "Upload"), as
 * ingest hands it to the store. This header is all that a consumer of
 * batches (the store's writer, its tests) needs; the decoders that make
 * batches are in bnstat/ingest.h.
 *
 * A batch is one block of memory: the header, its layer table, every
 * value array and every name. Whoever holds the batch owns all of it and
 * releases it with ingest_batch_free(); the pointers inside it are
 * borrowed from the batch and die with it.
 */
#ifndef BNSTAT_BATCH_H
#define BNSTAT_BATCH_H

#include <stddef.h>
#include <stdint.h>

#include "bnstat/stats.h"

#define INGEST_NAME_MAX 128	  /* run, worker, domain names */
#define INGEST_LAYER_NAME_MAX 256 /* layer (module) names */
#define INGEST_HASH_SIZE 16

struct ingest_layer {
	const char *name;   /* NUL-terminated, owned by the batch */
	int64_t count;	    /* elements per channel, >= 0 */
	size_t channels;    /* length of the arrays; 0 when count == 0 and no arrays were sent */
	const double *mean; /* [channels], NULL when channels == 0 */
	const double *var;  /* [channels], NULL when channels == 0 */
	const double *ema_mean; /* [channels] or NULL: the worker's running_mean */
	const double *ema_var;	/* [channels] or NULL: the worker's running_var */
	size_t order;		/* the layer's place in the upload as sent (a key that
				 * increases with it; not part of the content hash): a
				 * new layer is created in this order (docs/API.md, "Runs") */
};

struct ingest_batch {
	char run[INGEST_NAME_MAX + 1];
	char worker[INGEST_NAME_MAX + 1];
	char domain[INGEST_NAME_MAX + 1];
	int64_t step;
	int64_t seq;
	enum stats_var_kind var_kind;
	size_t n_layers;
	struct ingest_layer *layers; /* sorted by name (strcmp), names unique */
	/*
	 * Content hash over var_kind, the number of layers and, layer by
	 * layer in name order, name, count, channels, whether an EMA was sent
	 * and the decoded doubles (mean, var, ema; -0.0 stored as +0.0). A
	 * count-0 layer is content too. Two uploads
	 * of one identity are "the same content" exactly when the hashes agree,
	 * whatever encoding (number arrays, f32/f64 base64, safetensors) they
	 * used. Run, worker, domain, step and seq are the identity, not content,
	 * and are not hashed.
	 */
	uint8_t hash[INGEST_HASH_SIZE];
};

/*
 * Release batch b (from ingest_decode_json() or
 * ingest_decode_safetensors()) and everything it points to: its layers,
 * their names and value arrays. NULL is fine. Whoever owns the batch
 * calls this once; no pointer into b may be used after.
 */
void ingest_batch_free(struct ingest_batch *b);

#endif
