use std::sync::Arc;

use pagecache::*;

#[test]
fn write_read_copy_mem_and_block() {
    let cache = PageCache::new(CacheConfig { memory_limit: 64 << 20, dirty_limit: 1 << 20, flushers: 1 });
    let m = cache.mapping(Arc::new(MemOps), 16384).expect("mapping");
    let data: Vec<u8> = (0..100_000u32).map(|i| (i * 7) as u8).collect();
    assert_eq!(write_at(&m, 1000, &data), Ok(data.len()));
    let mut back = vec![0u8; data.len()];
    assert_eq!(m.read(1000, &mut back), Ok(data.len()));
    assert!(back == data);
    // Overlapping copy, both directions.
    let mut model = vec![0u8; 101_000];
    model[1000..].copy_from_slice(&data);
    assert_eq!(copy_range(&m, 1000, &m, 1500, 50_000), Ok(50_000));
    model.copy_within(1000..51_000, 1500);
    assert_eq!(copy_range(&m, 3000, &m, 2000, 40_000), Ok(40_000));
    model.copy_within(3000..43_000, 2000);
    let mut all = vec![0u8; model.len()];
    assert_eq!(m.read(0, &mut all), Ok(model.len()));
    assert!(all == model);

    let dir = std::env::temp_dir().join(format!("pc-smoke-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("mkdir");
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(dir.join("b"))
        .expect("f");
    let b = cache.mapping(Arc::new(BlockOps::new(Arc::new(FileBacking(f)))), 8192).expect("mapping");
    let mut cur = b.wb_err_cursor();
    for i in 0..20u64 {
        assert_eq!(write_at(&b, i * 300_000, &data), Ok(data.len()));
    }
    assert!(cache.throttle().max_dirty() <= (1 << 20) + 8192, "{}", cache.throttle().max_dirty());
    b.fsync(0, u64::MAX, &mut cur).expect("fsync");
    let on_disk = std::fs::read(dir.join("b")).expect("read");
    assert!(on_disk[19 * 300_000..19 * 300_000 + data.len()] == data[..]);
    std::fs::remove_dir_all(&dir).expect("rm");
}
