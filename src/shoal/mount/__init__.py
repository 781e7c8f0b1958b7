"""`shoal mount`: Shoal as a POSIX file system, through FUSE (libfuse 3, pyfuse3 on asyncio).

options.py  the -o options       cache.py    read-ahead and write-behind per inode
handles.py  open files and dirs  fs.py       the FUSE operations
mounts.py   the mount table      run.py      preflight, mount, serve, unmount
"""
