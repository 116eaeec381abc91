package main

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/tether-edge/tether/internal/pki"
	"github.com/tether-edge/tether/protocol"
)

func newTLSCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "tls",
		Short: "Create a CA, the broker's certificate and device certificates (for installations without a PKI)",
	}
	cmd.AddCommand(newTLSInitCmd(), newTLSDeviceCmd())
	return cmd
}

func newTLSInitCmd() *cobra.Command {
	var dir string
	var hosts []string
	cmd := &cobra.Command{
		Use:   "init --dir DIR [--host HOST]...",
		Short: "Create a CA and the broker's server certificate in DIR, keeping any that exist",
		Long: `Create, in DIR, a CA (ca.pem, ca-key.pem; 10 years) and a server certificate
for the broker signed by it (server.pem, server-key.pem; 2 years). The server
certificate names localhost, 127.0.0.1, ::1 and every --host: give each name
and address devices use to reach the broker.

Existing files are kept, never replaced: running it again changes nothing. To
reissue the server certificate, remove server.pem and server-key.pem.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			abs, err := absDir(dir)
			if err != nil {
				return err
			}
			f, err := pki.Init(abs, hosts)
			if err != nil {
				return err
			}
			printTLSInit(cmd.OutOrStdout(), f, hosts)
			return nil
		},
	}
	cmd.Flags().StringVar(&dir, "dir", "", "directory for the CA and the broker's certificate, created if absent (required)")
	cmd.Flags().StringArrayVar(&hosts, "host", nil, "DNS name or IP address of the broker for its certificate (repeatable)")
	return cmd
}

func newTLSDeviceCmd() *cobra.Command {
	var dir string
	var ttl time.Duration
	cmd := &cobra.Command{
		Use:   "device ID... --dir DIR [--ttl 8760h]",
		Short: "Issue client certificates whose CommonName is the device id, signed by the CA in DIR",
		Long: `Issue, for every device ID, a client certificate with that CommonName, signed
by the CA that ` + "`tether tls init`" + ` created in DIR. The files go to
DIR/clients/ID/ID.pem and ID-key.pem; a device needs them and DIR/ca.pem.

A device whose files exist is skipped; remove them to reissue.`,
		Args: func(_ *cobra.Command, ids []string) error {
			if len(ids) == 0 {
				return errors.New("give the device ids to issue certificates for")
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, ids []string) error {
			abs, err := absDir(dir)
			if err != nil {
				return err
			}
			if ttl <= 0 {
				return fmt.Errorf("--ttl %s: want a positive duration, e.g. 8760h", ttl)
			}
			// Check every id before writing anything.
			var errs []error
			for _, id := range ids {
				if err := protocol.ValidateID(id); err != nil {
					errs = append(errs, fmt.Errorf("device id: %w", err))
				}
			}
			if err := errors.Join(errs...); err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			for _, id := range ids {
				certFile, keyFile, err := pki.IssueClient(abs, id, ttl)
				switch {
				case errors.Is(err, pki.ErrExists):
					fmt.Fprintf(out, "%s: kept %s and %s\n", id, certFile, keyFile)
				case errors.Is(err, fs.ErrNotExist):
					return fmt.Errorf("%w (create the CA with `tether tls init --dir %s`)", err, dir)
				case err != nil:
					return err
				default:
					fmt.Fprintf(out, "%s: created %s and %s\n", id, certFile, keyFile)
				}
			}
			fmt.Fprintf(out, "\nOn each device, with its two files and %s:\n", filepath.Join(abs, pki.CACertFile))
			fmt.Fprintf(out, "  edged --broker mqtts://BROKER:PORT --ca-file ca.pem --cert-file ID.pem --key-file ID-key.pem ...\n")
			return nil
		},
	}
	cmd.Flags().StringVar(&dir, "dir", "", "directory that tether tls init created (required)")
	cmd.Flags().DurationVar(&ttl, "ttl", 365*24*time.Hour, "validity of the certificates, at most the CA's")
	return cmd
}

func absDir(dir string) (string, error) {
	if dir == "" {
		return "", errors.New("--dir is required: the directory that holds (or will hold) the CA")
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return "", fmt.Errorf("--dir %s: %w", dir, err)
	}
	return abs, nil
}

func printTLSInit(out io.Writer, f pki.Files, hosts []string) {
	state := func(path string) string {
		if slices.Contains(f.Created, path) {
			return "created"
		}
		return "kept"
	}
	fmt.Fprintf(out, "CA certificate:      %s (%s)\n", f.CACert, state(f.CACert))
	fmt.Fprintf(out, "CA key:              %s (%s; secret, only `tether tls device` needs it)\n", f.CAKey, state(f.CAKey))
	if state(f.ServerCert) == "created" {
		fmt.Fprintf(out, "Server certificate:  %s (created for %s)\n", f.ServerCert, strings.Join(append(slices.Clone(pki.DefaultHosts), hosts...), ", "))
	} else {
		fmt.Fprintf(out, "Server certificate:  %s (kept)\n", f.ServerCert)
	}
	fmt.Fprintf(out, "Server key:          %s (%s)\n", f.ServerKey, state(f.ServerKey))
	if len(f.Uncovered) > 0 {
		fmt.Fprintf(out, "Warning: the kept server certificate does not name %s; remove %s and %s and run this again to reissue it\n",
			strings.Join(f.Uncovered, ", "), f.ServerCert, f.ServerKey)
	}
	fmt.Fprintf(out, `
Next steps:
  Serve MQTT over TLS (and wss://); --tls-client-ca lets devices log in with a client certificate:
    tether server --tls-cert %s --tls-key %s --tls-client-ca %s ...
  Issue a certificate per device (its CommonName is the device id):
    tether tls device DEVICE-ID... --dir %s
  Connect devices and the CLI over TLS:
    edged --broker mqtts://BROKER:PORT --ca-file ca.pem --cert-file DEVICE-ID.pem --key-file DEVICE-ID-key.pem ...
    tether --broker mqtts://BROKER:PORT --ca-file %s device list
`, f.ServerCert, f.ServerKey, f.CACert, filepath.Dir(f.CACert), f.CACert)
}
