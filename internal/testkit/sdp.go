package testkit

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// LargeSDP is an SDP body of at least size bytes in SIPp's template
// language, as softphones send: many audio codecs, SRTP keys, video.
func LargeSDP(size int) string {
	lines := []string{
		"v=0",
		"o=user1 53655765 2353687637 IN IP[local_ip_type] [local_ip]",
		"s=-",
		"c=IN IP[media_ip_type] [media_ip]",
		"t=0 0",
		"m=audio [media_port] RTP/SAVP 0 8 9 18 101 " + ptRange(102, 127),
		"a=rtpmap:0 PCMU/8000", "a=rtpmap:8 PCMA/8000", "a=rtpmap:9 G722/8000",
		"a=rtpmap:18 G729/8000", "a=fmtp:18 annexb=no", "a=rtpmap:101 telephone-event/8000", "a=fmtp:101 0-16",
	}
	for pt := 102; pt <= 127; pt++ {
		lines = append(lines, fmt.Sprintf("a=rtpmap:%d opus/48000/2", pt), fmt.Sprintf("a=fmtp:%d maxplaybackrate=48000;stereo=1;useinbandfec=1", pt))
	}
	lines = append(lines, "m=video 9 RTP/SAVP 96 97 98", "a=rtpmap:96 H264/90000", "a=rtpmap:97 VP8/90000", "a=rtpmap:98 VP9/90000")
	n := 0
	for _, l := range lines {
		n += len(l) + 2
	}
	for tag := 1; n < size; tag++ {
		l := fmt.Sprintf("a=crypto:%d AES_CM_128_HMAC_SHA1_80 inline:%040d|2^31", tag, tag)
		lines = append(lines, l)
		n += len(l) + 2
	}
	return strings.Join(lines, "\n      ")
}

func ptRange(from, to int) string {
	var b strings.Builder
	for pt := from; pt <= to; pt++ {
		if pt > from {
			b.WriteByte(' ')
		}
		b.WriteString(strconv.Itoa(pt))
	}
	return b.String()
}

// LargeScenario writes the SIPp scenario template (whose SDP is the line
// @SDP@) into a temp dir with an SDP that makes its message about size
// bytes (about 450 bytes of headers come first) and returns its path.
func LargeScenario(tb testing.TB, template string, size int) string {
	tb.Helper()
	tmpl, err := os.ReadFile(template)
	if err != nil {
		tb.Fatal(err)
	}
	if !strings.Contains(string(tmpl), "@SDP@") {
		tb.Fatalf("%s has no @SDP@ line", template)
	}
	path := filepath.Join(tb.TempDir(), filepath.Base(template))
	text := strings.Replace(string(tmpl), "@SDP@", LargeSDP(size-450), 1)
	if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
		tb.Fatal(err)
	}
	return path
}
