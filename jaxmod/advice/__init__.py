"""The bridge between host-side advice and the device: validated answers in, fixed-shape arrays out;
plus the teacher advisor (answers from a stronger saved policy)."""
