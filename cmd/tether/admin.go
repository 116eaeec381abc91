package main

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"github.com/tether-edge/tether/bus"
	"github.com/tether-edge/tether/internal/cli"
	"github.com/tether-edge/tether/protocol"
)

// adminCall sends one admin request and waits for the planner's answer. An
// answer that refuses the request is an error.
func (g *globals) adminCall(ctx context.Context, req protocol.AdminRequest) (protocol.AdminResult, error) {
	_, _, _, principal, err := g.credentials()
	if err != nil {
		return protocol.AdminResult{}, err
	}
	c, topics, err := g.connect(ctx)
	if err != nil {
		return protocol.AdminResult{}, err
	}
	defer c.Close()
	nonce := bus.RandomID("r")
	answers := make(chan []byte, 1)
	sctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	err = c.Subscribe(sctx, topics.AdminResult(principal, nonce), 1, func(m bus.Message) {
		select {
		case answers <- m.Payload:
		default:
		}
	})
	cancel()
	if err != nil {
		return protocol.AdminResult{}, fmt.Errorf("the broker refused this client the admin answers (an operator token is needed): %w", err)
	}
	payload, err := protocol.Encode(req)
	if err != nil {
		return protocol.AdminResult{}, err
	}
	pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	err = c.Publish(pctx, topics.Admin(principal, nonce), payload, false, 1)
	cancel()
	if err != nil {
		return protocol.AdminResult{}, fmt.Errorf("send %s request: %w", req.Op, err)
	}
	select {
	case raw := <-answers:
		res, err := protocol.DecodeAdminResult(raw)
		if err != nil {
			return res, fmt.Errorf("unreadable answer from the planner: %w", err)
		}
		if !res.OK {
			return res, fmt.Errorf("%s refused: %s", req.Op, res.Error)
		}
		return res, nil
	case <-time.After(15 * time.Second):
		return protocol.AdminResult{}, fmt.Errorf("no answer to %s within 15s: is the token an operator token, and the server this version or newer?", req.Op)
	case <-ctx.Done():
		return protocol.AdminResult{}, ctx.Err()
	}
}

func newACLCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "acl", Short: "Manage operator and viewer tokens"}
	tok := &cobra.Command{Use: "token", Short: "Create, list and revoke operator and viewer tokens"}
	var role, name string
	var ttl time.Duration
	create := &cobra.Command{
		Use:   "create",
		Short: "Create a token; its secret is shown once",
		Long: `Create a token for an operator (submit and stop jobs, manage devices and
identities) or a viewer (read status topics, e.g. a dashboard). The token is
printed once and stored only as a hash.`,
		Example: "  tether acl token create --role viewer --name wall-dashboard",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			r, err := protocol.ParseRole(role)
			if err != nil {
				return fmt.Errorf("--role: %w", err)
			}
			if ttl < 0 {
				return errors.New("--ttl: must not be negative")
			}
			res, err := g.adminCall(cmd.Context(), protocol.AdminRequest{Op: protocol.OpTokenCreate, Role: r, Name: name, TTL: protocol.Duration(ttl)})
			if err != nil {
				return err
			}
			printNewToken(cmd, res)
			return nil
		},
	}
	create.Flags().StringVar(&role, "role", "", "operator or viewer (required)")
	create.Flags().StringVar(&name, "name", "", "what or who the token is for")
	create.Flags().DurationVar(&ttl, "ttl", 0, "how long the token is valid (default: until revoked)")
	_ = create.MarkFlagRequired("role")
	tok.AddCommand(create, newTokenListCmd(g, protocol.OpTokenList), newTokenRevokeCmd(g))
	cmd.AddCommand(tok)
	return cmd
}

func printNewToken(cmd *cobra.Command, res protocol.AdminResult) {
	out := cmd.OutOrStdout()
	fmt.Fprintln(out, res.Token)
	if len(res.Tokens) == 1 {
		t := res.Tokens[0]
		fmt.Fprintf(cmd.ErrOrStderr(), "Created %s token %s; it is shown only now. MQTT clients use username %s and the part after the '.' as password.\n",
			t.Role, t.ID, protocol.TokenUsername(t.ID))
	}
}

func newTokenListCmd(g *globals, op protocol.AdminOp) *cobra.Command {
	return &cobra.Command{
		Use:   "list",
		Short: "List tokens (never their secrets)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			res, err := g.adminCall(cmd.Context(), protocol.AdminRequest{Op: op})
			if err != nil {
				return err
			}
			w := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 0, 2, ' ', 0)
			fmt.Fprintln(w, "ID\tROLE\tNAME\tCREATED\tEXPIRES\tUSES LEFT\tLABELS\tSTATE")
			for _, t := range res.Tokens {
				exp, uses, state := "never", "-", "active"
				if t.ExpiresAt != nil {
					exp = t.ExpiresAt.Local().Format(time.DateTime)
					if time.Now().After(*t.ExpiresAt) {
						state = "expired"
					}
				}
				if t.Role == protocol.RoleEnroll {
					uses = fmt.Sprint(t.UsesLeft)
					if t.UsesLeft == 0 && state == "active" {
						state = "used up"
					}
				}
				if t.Revoked {
					state = "revoked"
				}
				fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", t.ID, t.Role, orDash(t.Name), t.CreatedAt.Local().Format(time.DateTime),
					exp, uses, orDash(formatLabels(t.Labels)), state)
			}
			return w.Flush()
		},
	}
}

func newTokenRevokeCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "revoke ID",
		Short: "Revoke a token at once; clients using it are disconnected",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			id := args[0]
			if t, err := protocol.ParseToken(id); err == nil {
				id = t.ID // a whole token pasted: its id is enough
			}
			if _, err := g.adminCall(cmd.Context(), protocol.AdminRequest{Op: protocol.OpTokenRevoke, ID: id}); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "Token %s revoked.\n", id)
			return nil
		},
	}
}

func newEnrollCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "enroll", Short: "Fleet enrollment tokens: new devices obtain their own identity on first boot"}
	tok := &cobra.Command{Use: "token", Short: "Create, list and revoke enrollment tokens"}
	var uses int
	var ttl time.Duration
	var labels []string
	var name string
	create := &cobra.Command{
		Use:   "create",
		Short: "Create an enrollment token for --uses devices within --ttl",
		Long: `Create a fleet enrollment token to bundle into device firmware or
provisioning. A device started with edged --enroll-token obtains its own
identity with it on first boot, once; the token's labels are applied to it.`,
		Example: "  tether enroll token create --uses 500 --ttl 24h --label site=berlin",
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			lbls, err := cli.ParseLabels(labels)
			if err != nil {
				return err
			}
			if uses < 1 {
				return fmt.Errorf("--uses: want at least 1, got %d", uses)
			}
			if ttl <= 0 {
				return errors.New("--ttl: required, e.g. 24h")
			}
			res, err := g.adminCall(cmd.Context(), protocol.AdminRequest{Op: protocol.OpEnrollCreate, Uses: uses, TTL: protocol.Duration(ttl), Labels: lbls, Name: name})
			if err != nil {
				return err
			}
			printNewToken(cmd, res)
			return nil
		},
	}
	create.Flags().IntVar(&uses, "uses", 1, "how many devices may enroll with it")
	create.Flags().DurationVar(&ttl, "ttl", 24*time.Hour, "how long it is valid")
	create.Flags().StringArrayVar(&labels, "label", nil, "label KEY=VALUE for every device that enrolls with it (repeatable)")
	create.Flags().StringVar(&name, "name", "", "what the token is for, e.g. a production batch")
	tok.AddCommand(create, newTokenListCmd(g, protocol.OpEnrollList), newTokenRevokeCmd(g))
	cmd.AddCommand(tok)
	return cmd
}

func newKeysCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{Use: "keys", Short: "The planner's keys for signing desired state"}
	show := func(cmd *cobra.Command, keys []protocol.KeyInfo) {
		w := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 0, 2, ' ', 0)
		fmt.Fprintln(w, "ID\tCREATED\tCURRENT\tPUBLIC KEY")
		for _, k := range keys {
			cur := ""
			if k.Current {
				cur = "yes"
			}
			fmt.Fprintf(w, "%s\t%s\t%s\t%s\n", k.ID, k.CreatedAt.Local().Format(time.DateTime), cur, k.Key)
		}
		_ = w.Flush()
	}
	list := &cobra.Command{
		Use: "list", Short: "List the signing keys", Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			res, err := g.adminCall(cmd.Context(), protocol.AdminRequest{Op: protocol.OpKeyList})
			if err != nil {
				return err
			}
			show(cmd, res.Keys)
			return nil
		},
	}
	rotate := &cobra.Command{
		Use:   "rotate",
		Short: "Sign with a new key, endorsed by the current one",
		Long: `Make a new signing key. Desired documents are signed with it from now on and
carry its endorsement by the previous key, so devices that trust any earlier
key learn it without being re-flashed.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			res, err := g.adminCall(cmd.Context(), protocol.AdminRequest{Op: protocol.OpKeyRotate})
			if err != nil {
				return err
			}
			show(cmd, res.Keys)
			return nil
		},
	}
	cmd.AddCommand(list, rotate)
	return cmd
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func formatLabels(l map[string]string) string {
	var parts []string
	for _, k := range slices.Sorted(maps.Keys(l)) {
		parts = append(parts, k+"="+l[k])
	}
	return strings.Join(parts, ",")
}
