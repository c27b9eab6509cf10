# A recorded accelerometer trace for the simulated parts (hal/simaccel.py), streamed from its
# file one line at a time: a trace of any length costs one line of heap, not the whole file
# (a minute at 50 Hz held as a list of tuples would take ~200 KB on the 64-bit unix port).
#
# Format: text, one sample per line, `x_mg,y_mg,z_mg` as integers in milli-g (the sensor's own
# axes), e.g. `12,-985,40`. Blank lines and `#` comments are skipped, and so is a header line
# (starting with a letter, such as `x_mg,y_mg,z_mg`) before the first sample. The sample rate is
# not in the file: the scenario step gives it (`rate_hz`). Text rather than packed int16: it is
# what recorders and spreadsheets export, it diffs, and parsing costs ~9 us a sample here
# (readline on the unix port reads byte by byte, fine at 50 Hz even at speed 60).
#
# The part asks for sample indexes in increasing order (its FIFO), so reading only moves
# forward; an earlier index reopens the file. After the last sample it holds that one.
class TraceFile:
    def __init__(self, path):
        self.path = path
        self._f = None
        self._open()
        if self.sample(0) is None:
            raise ValueError("accel trace %s has no samples" % path)

    def _open(self):
        self.close()
        self._f = open(self.path)   # OSError for a missing file, at the scenario step
        self._line = 0      # lines read, for error messages
        self._k = -1        # index of self._mg
        self._mg = None

    def close(self):
        if self._f is not None:
            self._f.close()
            self._f = None

    def sample(self, k):
        """Sample k (x, y, z milli-g), or the last one once k is past the end."""
        if k < self._k:
            self._open()
        while self._k < k and self._f is not None:
            line = self._f.readline()
            if not line:
                self.close()
                break
            self._line += 1
            mg = self._parse(line.strip())
            if mg is not None:
                self._mg = mg
                self._k += 1
        return self._mg

    def _parse(self, s):
        if not s or s[0] == "#" or (self._k < 0 and s[0].isalpha()):
            return None
        parts = s.split(",")
        try:
            if len(parts) == 3:
                return (int(parts[0]), int(parts[1]), int(parts[2]))
        except ValueError:
            pass
        raise ValueError("%s:%d: expected x_mg,y_mg,z_mg (integers), got %r" % (self.path, self._line, s))
