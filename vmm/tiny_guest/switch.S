# The KVM switch test guest: a real-mode boot sector. SeaBIOS loads it at
# 0x7C00 with its VGA BIOS in text mode 3. It takes the keyboard's IRQ 1
# itself (IVT entry 9), and with interrupts on halts between events:
#  - at start: clears the screen, writes the title and its label on row 0
#    (white on blue), and "READY <label>" on COM1;
#  - every byte the i8042 gives on IRQ 1: "Kxx\n" on COM1 and "xx " on the
#    screen from row 2, wrapping back to row 2 after row 23;
#  - if the animate flag is set, at every timer tick (IRQ 0, 18.2 Hz) a
#    16-bit counter in hex on row 24; F12 (make code 0x58) flips the flag.
        .code16
        .set RING,    0x7e00      # 64 bytes
        .set HEAD,    0x7e40
        .set TAIL,    0x7e42
        .set COUNTER, 0x7e44
        .set CURSOR,  0x7e46
        .set LABEL,   0x7c00 + 0x1a0
        .set ANIMATE, 0x7c00 + 0x1b8
        .globl _start
_start:
        cli
        xor %ax, %ax
        mov %ax, %ds
        mov %ax, %ss
        mov $0x7c00, %sp
        movw $irq1, (9*4)
        movw $0, (9*4+2)
        movw $0, (HEAD)
        movw $0, (TAIL)
        movw $0, (COUNTER)
        movw $(2*160), (CURSOR)
        mov $0xb800, %ax
        mov %ax, %es
        xor %di, %di
        mov $2000, %cx
        mov $0x0720, %ax
        rep stosw
        xor %di, %di
        mov $title, %si
        call screen_str
        mov $LABEL, %si
        call screen_str
        mov $ready, %si
        call serial_str
        mov $LABEL, %si
        call serial_str
        mov $10, %al
        call serial_ch
        sti
main:
        hlt
drain:
        cli
        mov (HEAD), %bx
        cmp (TAIL), %bx
        je drained
        mov RING(%bx), %al
        inc %bx
        and $63, %bx
        mov %bx, (HEAD)
        sti
        call show_key
        jmp drain
drained:
        sti
        cmpb $0, (ANIMATE)
        je main
        incw (COUNTER)
        mov $(24*160), %di
        mov (COUNTER+1), %al
        call hex_screen
        mov (COUNTER), %al
        call hex_screen
        jmp main

# A key byte in %al: COM1 and the screen.
show_key:
        push %ax
        mov $'K', %al
        call serial_ch
        pop %ax
        push %ax
        call hex_serial
        mov $10, %al
        call serial_ch
        mov (CURSOR), %di
        cmp $(24*160), %di
        jb 1f
        mov $(2*160), %di
1:      pop %ax
        cmp $0x58, %al            # F12: the counter on or off
        jne 2f
        xorb $1, (ANIMATE)
2:      call hex_screen
        movw $0x0f20, %es:(%di)
        add $2, %di
        mov %di, (CURSOR)
        ret

# %al as two hex digits on COM1.
hex_serial:
        push %ax
        shr $4, %al
        call nibble
        call serial_ch
        pop %ax
        call nibble
        jmp serial_ch

# %al as two hex digits at %es:%di (bright white), %di advanced.
hex_screen:
        push %ax
        shr $4, %al
        call nibble
        mov $0x0f, %ah
        stosw
        pop %ax
        call nibble
        mov $0x0f, %ah
        stosw
        ret

nibble:
        and $15, %al
        add $'0', %al
        cmp $'9', %al
        jbe 1f
        add $7, %al
1:      ret

serial_ch:
        mov $0x3f8, %dx
        out %al, %dx
        ret

serial_str:
        lodsb
        test %al, %al
        jz 1f
        call serial_ch
        jmp serial_str
1:      ret

# A NUL-ended string at %si in white on blue at %es:%di.
screen_str:
        lodsb
        test %al, %al
        jz 1f
        mov $0x1f, %ah
        stosw
        jmp screen_str
1:      ret

irq1:
        push %ax
        push %bx
        push %ds
        xor %ax, %ax
        mov %ax, %ds
        in $0x64, %al             # a byte waiting? (a stray IRQ has none)
        test $1, %al
        jz 1f
        in $0x60, %al
        mov (TAIL), %bx
        mov %al, RING(%bx)
        inc %bx
        and $63, %bx
        mov %bx, (TAIL)
1:      mov $0x20, %al
        out %al, $0x20
        pop %ds
        pop %bx
        pop %ax
        iret

title:  .asciz " kvmos switch guest "
ready:  .asciz "READY "
