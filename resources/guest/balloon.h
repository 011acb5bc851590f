/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Hearth test guest: virtio balloon constants (virtio 1.2, 5.5) shared by
 * balloon.S (the driver) and balloon_run.S (its scenarios).
 */
#ifndef HEARTH_BALLOON_H
#define HEARTH_BALLOON_H

/* Feature bits (5.5.3). */
#define VIRTIO_BALLOON_F_STATS_VQ	(1 << 1)
#define VIRTIO_BALLOON_F_DEFLATE_ON_OOM	(1 << 2)
#define VIRTIO_BALLOON_F_PAGE_REPORTING	(1 << 5)

/* Config space (5.5.4), as register offsets. */
#define BALLOON_CFG_NUM_PAGES		(VIRTIO_MMIO_CONFIG + 0)
#define BALLOON_CFG_ACTUAL		(VIRTIO_MMIO_CONFIG + 4)

/* Queues. */
#define VQ_INFLATE			0
#define VQ_DEFLATE			1
#define VQ_STATS			2

#define PAGE_SIZE			4096
#define PFNS_PER_BUFFER			256

#endif /* HEARTH_BALLOON_H */
